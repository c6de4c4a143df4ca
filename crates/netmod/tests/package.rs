//! The Debian package installs into a fresh root and works there: the files,
//! the systemd unit (`systemd-analyze verify`), the CNI plugin link, and
//! `netmod --version`. `scripts/package.sh` builds the package (the test run
//! does so before `cargo test`); the install happens in a mount namespace
//! on copy-on-write overlays, so this machine is never changed.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// The newest package in target/debian, or a failure saying how to build it.
fn package() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_netmod"))
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join("debian");
    let newest = std::fs::read_dir(&dir).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.starts_with("netmod_") && name.ends_with(".deb")
            })
            .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
    });
    newest.unwrap_or_else(|| {
        panic!(
            "no netmod_*.deb in {}: run `bash scripts/package.sh` first (scripts/test.sh does)",
            dir.display()
        )
    })
}

#[test]
fn the_package_installs_into_a_fresh_root_with_unit_plugin_link_and_docs() {
    let deb = package();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "bash"])
        .arg(repo().join("scripts/install-test-root.sh"))
        .arg(&deb)
        .output()
        .expect("unshare (util-linux) runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "installing {} failed:\n{stdout}\n{stderr}",
        deb.display()
    );
    // The lines between `== NAME` and the next `== ` header.
    let section = |name: &str| -> Vec<String> {
        let header = format!("== {name}");
        let mut lines = stdout.lines().skip_while(|l| *l != header);
        assert!(lines.next().is_some(), "no {name} section in:\n{stdout}");
        lines
            .take_while(|l| !l.starts_with("== "))
            .map(str::to_string)
            .collect()
    };
    let files = section("files");
    for want in [
        "/usr/bin/netmod",
        "/usr/bin/netmod-lab",
        "/usr/bin/star-probe",
        "/usr/bin/star-collect",
        "/usr/lib/systemd/system/netmod-node.service",
        "/etc/default/netmod",
        "/opt/cni/bin/netmod",
        "/usr/share/doc/netmod/README.md",
        "/usr/share/doc/netmod/mesos-net-modules.md",
    ] {
        assert!(
            files.iter().any(|f| f == want),
            "{want} missing from the package's files:\n{}",
            files.join("\n")
        );
    }
    assert!(
        !files.iter().any(|f| f.contains("netmod-bench")),
        "the package carries no benchmarks"
    );
    // systemd-analyze verify prints nothing for a clean unit.
    let verify = section("verify");
    assert!(
        verify.iter().all(|l| l.trim().is_empty()),
        "systemd-analyze verify complained:\n{}\n{stderr}",
        verify.join("\n")
    );
    assert!(
        !stderr.contains("netmod-node.service:"),
        "systemd-analyze verify complained:\n{stderr}"
    );
    let version = section("version").join("\n");
    assert!(
        version.starts_with("netmod ") && version.contains("git"),
        "netmod --version: {version:?}"
    );
    let cni = section("cni");
    assert_eq!(cni.first().map(String::as_str), Some("/usr/bin/netmod"));
    let reply: serde_json::Value = serde_json::from_str(cni[1..].join("\n").trim())
        .unwrap_or_else(|e| panic!("CNI VERSION reply is not JSON ({e}): {cni:?}"));
    assert!(reply["supportedVersions"]
        .as_array()
        .is_some_and(|v| v.iter().any(|x| x == "1.1.0")));
    assert!(stdout.contains("netmod-lab runs"));
}
