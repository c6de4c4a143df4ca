//! Bakes the git commit into `netmod --version`.
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|c| !c.is_empty());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| !o.stdout.is_empty());
    let text = match commit {
        Some(c) if dirty => format!("git {c}, modified"),
        Some(c) => format!("git {c}"),
        // A source tarball without .git, e.g. a package build from crates.
        None => std::env::var("NETMOD_GIT_COMMIT").unwrap_or_else(|_| "git commit unknown".into()),
    };
    println!("cargo:rustc-env=NETMOD_GIT_COMMIT={text}");
    // Rebuild when HEAD moves or the index changes.
    for f in ["../../.git/HEAD", "../../.git/index"] {
        if std::path::Path::new(f).exists() {
            println!("cargo:rerun-if-changed={f}");
        }
    }
    println!("cargo:rerun-if-env-changed=NETMOD_GIT_COMMIT");
}
