//! A store address that names nothing usable is an error, in every door's
//! format, and creates nothing: no directory, no file, no `http:` file.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `netmod ARGS` in `dir` (so a relative file would land there), without
/// NETMOD_STORE from the environment.
fn netmod_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(NETMOD)
        .args(args)
        .current_dir(dir)
        .env_remove("NETMOD_STORE")
        .output()
        .unwrap()
}

/// Exit status 1 and one line on stderr containing every one of `words`.
fn assert_one_sentence(out: &Output, words: &[&str], what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{what}: {stderr}");
    for w in words {
        assert!(stderr.contains(w), "{what}: {w:?} missing from {stderr}");
    }
    assert!(out.stdout.is_empty(), "{what}: printed {:?}", out.stdout);
}

/// Every file and directory under `dir`, for "nothing was created".
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        out.push(p.display().to_string());
        if p.is_dir() {
            out.extend(tree(&p));
        }
    }
    out.sort();
    out
}

const READERS: &[&[&str]] = &[
    &["endpoints"],
    &["ipam", "show"],
    &["pool", "list"],
    &["explain", "a", "b"],
    &["ipam", "check", "--hostname", "h"],
    &["pool", "rm", "10.0.0.0/8"],
    &["ipam", "release", "--handle", "x"],
];

#[test]
fn a_store_in_a_missing_directory_is_an_error_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("no/such/dir/x.db");
    let db = db.to_str().unwrap();
    for args in READERS {
        let mut all = vec!["--store", db];
        all.extend_from_slice(args);
        let out = netmod_in(tmp.path(), &all);
        assert_one_sentence(
            &out,
            &[
                db,
                "nor does its directory",
                "no/such/dir",
                "netmod pool add",
            ],
            &args.join(" "),
        );
        assert!(tree(tmp.path()).is_empty(), "{args:?} created something");
    }
    // A command that writes may create the file, never the directory.
    let out = netmod_in(tmp.path(), &["--store", db, "pool", "add", "10.40.0.0/16"]);
    assert_one_sentence(
        &out,
        &[db, "the directory", "no/such/dir does not exist"],
        "pool add",
    );
    assert!(tree(tmp.path()).is_empty(), "pool add created something");
    // The same through NETMOD_STORE.
    let out = Command::new(NETMOD)
        .args(["endpoints"])
        .current_dir(tmp.path())
        .env("NETMOD_STORE", db)
        .output()
        .unwrap();
    assert_one_sentence(&out, &[db], "NETMOD_STORE endpoints");
    assert!(tree(tmp.path()).is_empty());
}

#[test]
fn reading_commands_never_create_a_store() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("x.db");
    let db = db.to_str().unwrap();
    for args in READERS {
        let mut all = vec!["--store", db];
        all.extend_from_slice(args);
        let out = netmod_in(tmp.path(), &all);
        assert_one_sentence(
            &out,
            &[
                &format!("no datastore at {db}"),
                "the file does not exist",
                "netmod pool add",
            ],
            &args.join(" "),
        );
        assert!(tree(tmp.path()).is_empty(), "{args:?} created something");
    }
    // Someone else's file is not taken over, and not changed.
    std::fs::write(db, b"notes").unwrap();
    let out = netmod_in(tmp.path(), &["--store", db, "endpoints"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read(db).unwrap(), b"notes");
    std::fs::remove_file(db).unwrap();
    // `pool add` creates it; then the readers work.
    let out = netmod_in(
        tmp.path(),
        &["--store", db, "pool", "add", "fd6e:6d01:41::/64"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(Path::new(db).is_file());
    for args in [&["endpoints"][..], &["ipam", "show"], &["pool", "list"]] {
        let mut all = vec!["--store", db];
        all.extend_from_slice(args);
        let out = netmod_in(tmp.path(), &all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn an_unknown_scheme_is_an_error_not_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    for addr in [
        "http://10.0.0.1:2379",
        "https://etcd.example:2379",
        "etcds://10.0.0.1:2379",
        "file:///tmp/x.db",
    ] {
        let scheme = addr.split("://").next().unwrap();
        for args in [&["endpoints"][..], &["pool", "add", "10.42.0.0/16"]] {
            let mut all = vec!["--store", addr];
            all.extend_from_slice(args);
            let out = netmod_in(tmp.path(), &all);
            assert_one_sentence(
                &out,
                &[
                    &format!("unknown scheme {scheme}://"),
                    "etcd://HOST:PORT",
                    addr,
                ],
                &format!("{addr} {args:?}"),
            );
        }
        assert!(
            tree(tmp.path()).is_empty(),
            "{addr} created {:?}",
            tree(tmp.path())
        );
    }
}

#[test]
fn the_doors_answer_a_bad_store_in_their_own_format() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("no/such/dir/x.db");
    let bad = bad.to_str().unwrap();
    for addr in [bad, "http://10.0.0.1:2379"] {
        // net-modules: {"error": "..."} and exit status 1.
        let mut child = Command::new(NETMOD)
            .args(["--store", addr, "mesos"])
            .current_dir(tmp.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(br#"{"command":"allocate","args":{"hostname":"h","num_ipv4":1,"num_ipv6":0,"uid":"u"}}"#)
            .unwrap();
        let out = wait(&mut child);
        assert_eq!(out.status.code(), Some(1), "{addr}");
        let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reply.as_object().unwrap().len(), 1, "{reply}");
        let msg = reply["error"].as_str().unwrap();
        assert!(msg.contains(addr), "{msg}");
        // CNI: the error object, code 7 (the configuration names the store).
        let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "n", "type": "netmod",
            "store": addr, "hostname": "h"});
        let mut child = Command::new(NETMOD)
            .current_dir(tmp.path())
            .env_clear()
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", "c1")
            .env("CNI_NETNS", "/proc/self/ns/net")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = wait(&mut child);
        assert_eq!(out.status.code(), Some(1), "{addr}");
        let err: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(err["code"], 7, "{err}");
        assert!(err["msg"].as_str().unwrap().contains(addr), "{err}");
        assert_eq!(err["cniVersion"], "1.0.0");
        assert!(
            tree(tmp.path()).is_empty(),
            "{addr}: {:?}",
            tree(tmp.path())
        );
    }
}
