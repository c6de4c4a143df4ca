//! The web view in a real headless Chromium (loopback only).
//!
//! Needs /usr/bin/chromium (Debian package `chromium`). Without it these
//! tests fail and say so: a test that cannot run does not pass.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Fails the test, saying why, when the browser is missing.
fn require_chromium() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the browser tests cannot run without it \
         (install the Debian package `chromium`)"
    );
}

/// Loads `url` in headless Chromium and returns the DOM after 5 s of
/// virtual time.
fn dump_dom(url: &str) -> String {
    let profile = scratch_dir("chromium-profile");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--virtual-time-budget=5000", "--dump-dom", url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromium");
    let mut stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut dom = String::new();
        stdout.read_to_string(&mut dom).map(|_| dom)
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s");
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "chromium failed: {status}");
    let dom = reader.join().unwrap().expect("reading chromium's output");
    let _ = std::fs::remove_dir_all(&profile);
    dom
}

fn count(dom: &str, needle: &str) -> usize {
    dom.matches(needle).count()
}

/// The value of the SVG's data-updated counter.
fn updates(dom: &str) -> u64 {
    let start = dom.find("data-updated=\"").expect("data-updated attribute") + 14;
    dom[start..]
        .split('"')
        .next()
        .unwrap()
        .parse()
        .expect("data-updated is a number")
}

#[test]
fn example_graph() {
    require_chromium();
    let collect = Server::collect(&[]);
    let dom = dump_dom(&format!("http://127.0.0.1:{}/?example=true", collect.port));
    // The sample: probes a-d answer (e does not). Edges among a-d:
    // a->b, b->a, c->d, d->a, d->c reachable; the other seven are not.
    assert_eq!(count(&dom, "class=\"edge reachable\""), 5, "{dom}");
    assert_eq!(count(&dom, "class=\"edge unreachable\""), 7, "{dom}");
    assert_eq!(count(&dom, "class=\"node\""), 4, "{dom}");
    for (from, to) in [("a", "b"), ("b", "a"), ("c", "d"), ("d", "a"), ("d", "c")] {
        let edge =
            format!("class=\"edge reachable\" data-from=\"probe-{from}\" data-to=\"probe-{to}\"");
        assert!(dom.contains(&edge), "missing {edge}");
    }
    assert!(
        !dom.contains("data-to=\"probe-e\""),
        "probe-e has no answer, so no node"
    );
    assert!(dom.contains("No answer from: probe-e"));
    assert!(
        dom.contains("<span id=\"source\">example data</span>"),
        "{dom}"
    );
    // Refreshed more than once in 5 s (every 2 s), without a reload.
    assert!(updates(&dom) >= 2, "data-updated = {}", updates(&dom));
}

#[test]
fn live_graph_from_real_probes() {
    require_chromium();
    // The probes reach each other: both sockets are bound before either
    // probe starts.
    let (s1, s2, closed) = (listener(), listener(), closed_port());
    let (p1, p2) = (port_of(&s1), port_of(&s2));
    let _probe1 = Server::probe_on(
        &s1,
        &[
            &format!("--urls={},{}", status_url(p2), status_url(closed.port)),
            "--http-probe-seconds=1",
        ],
    );
    let _probe2 = Server::probe_on(
        &s2,
        &[
            &format!("--urls={}", status_url(p1)),
            "--http-probe-seconds=1",
        ],
    );
    let dir = scratch_dir("browser-live");
    let file = write_file(
        &dir,
        "resources.json",
        &json!([
            {"id": "one", "url": status_url(p1)},
            {"id": "two", "url": status_url(p2)},
        ])
        .to_string(),
    );
    let collect = Server::collect(&[
        &format!("--resources-file={}", file.display()),
        "--http-request-seconds=1",
    ]);
    // Wait until the collector has seen both probes reach each other.
    let ready = wait_for(Duration::from_secs(6), || {
        let r = collect.get_json("/responses")["responses"].clone();
        let reaches = |id: &str| r[id]["json"]["status"]["targets"][0]["reachable"] == true;
        (reaches("one") && reaches("two")).then_some(())
    });
    assert!(ready.is_some(), "{}", collect.get_json("/responses"));

    let dom = dump_dom(&format!("http://127.0.0.1:{}/", collect.port));
    assert_eq!(count(&dom, "class=\"node\""), 2, "{dom}");
    assert!(
        dom.contains("class=\"edge reachable\" data-from=\"one\" data-to=\"two\""),
        "{dom}"
    );
    assert!(
        dom.contains("class=\"edge reachable\" data-from=\"two\" data-to=\"one\""),
        "{dom}"
    );
    // The closed port is no resource, so it is no node and draws no edge.
    assert_eq!(count(&dom, "class=\"edge "), 2, "{dom}");
    // Live data: the "example data" badge stays hidden.
    assert!(dom.contains("<span id=\"source\" hidden"), "{dom}");
}
