//! A real CNI runtime: Debian's Podman 4.3 with its CNI backend runs busybox
//! containers on netmod networks inside a fake host namespace (so the
//! machine's own network is never touched).

mod common;
use common::lab::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Podman {
    dir: tempfile::TempDir,
    host_ns: String,
}

impl Podman {
    fn new(f: &Fabric) -> Podman {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for d in [
            "cni",
            "conf",
            "root",
            "runroot",
            "rootfs/bin",
            "rootfs/www",
            "rootfs/proc",
            "rootfs/sys",
            "rootfs/dev",
            "rootfs/etc",
            "rootfs/tmp",
        ] {
            std::fs::create_dir_all(p.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", p.join("rootfs/bin/busybox")).unwrap();
        for tool in ["sh", "sleep", "httpd", "nc", "grep", "printf", "ip"] {
            std::os::unix::fs::symlink("busybox", p.join("rootfs/bin").join(tool)).unwrap();
        }
        std::fs::write(p.join("rootfs/www/index.html"), "star\n").unwrap();
        std::os::unix::fs::symlink(common::NETMOD, p.join("cni/netmod")).unwrap();
        for plugin in ["bridge", "host-local", "loopback"] {
            std::os::unix::fs::symlink(
                Path::new("/usr/lib/cni").join(plugin),
                p.join("cni").join(plugin),
            )
            .unwrap();
        }
        std::fs::write(
            p.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\n",
                p.join("cni").display(),
                p.join("conf").display()
            ),
        )
        .unwrap();
        let store = f.store.path.display().to_string();
        for group in ["g1", "g2"] {
            std::fs::write(
                p.join(format!("conf/nm-{group}.conflist")),
                format!(
                    r#"{{"cniVersion":"1.0.0","name":"nm-{group}","plugins":[{{"type":"netmod","store":"{store}","hostname":"h1","netgroups":["{group}"]}}]}}"#
                ),
            )
            .unwrap();
        }
        std::fs::write(
            p.join("conf/nmref.conflist"),
            r#"{"cniVersion":"1.0.0","name":"nmref","plugins":[{"type":"bridge","bridge":"nmtestref0","isGateway":true,"ipMasq":false,
               "ipam":{"type":"host-local","subnet":"10.252.7.0/24","routes":[{"dst":"0.0.0.0/0"}]}}]}"#,
        )
        .unwrap();
        Podman {
            dir,
            host_ns: f.host("h1").ns.clone(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let p = self.dir.path();
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.host_ns))
            .arg("podman")
            .arg("--root")
            .arg(p.join("root"))
            .arg("--runroot")
            .arg(p.join("runroot"))
            .args(args)
            .env("CONTAINERS_CONF", p.join("containers.conf"))
            .output()
            .unwrap()
    }

    fn must(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// A detached container serving HTTP on port 9000; returns its id.
    fn serve(&self, name: &str, network: &str) -> String {
        let rootfs = self.rootfs();
        self.must(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--rootfs",
            rootfs.to_str().unwrap(),
            "/bin/httpd",
            "-f",
            "-p",
            "9000",
            "-h",
            "/www",
        ])
    }

    /// An HTTP GET with busybox nc (Debian's static busybox wget crashes).
    fn fetches(&self, from: &str, addr: &str) -> bool {
        let script =
            format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {addr} 9000 | grep -q '200 OK'");
        self.run(&["exec", from, "/bin/sh", "-c", &script])
            .status
            .success()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-af", "-t", "0"]);
        let _ = sh(&format!(
            "umount -R {}/root 2>/dev/null",
            self.dir.path().display()
        ));
    }
}

fn addr_of(f: &Fabric, container_id: &str) -> String {
    let out = f.store.netmod(&["-o", "json", "endpoints"]);
    let eps: Value = serde_json::from_slice(&out.stdout).unwrap();
    eps.as_array()
        .unwrap()
        .iter()
        .find(|e| e["container_id"] == container_id)
        .unwrap_or_else(|| panic!("no endpoint for {container_id}: {eps}"))["ipv4"][0]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn podman_containers_on_netmod_networks() {
    require_lab();
    common::require_tools(&[
        ("podman", "podman"),
        ("runc", "runc"),
        ("busybox", "busybox-static"),
        ("mount", "mount"),
    ]);
    common::require(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox (Debian package busybox-static)",
    );
    common::require(
        ["bridge", "host-local", "loopback"]
            .iter()
            .all(|p| Path::new("/usr/lib/cni").join(p).exists()),
        "the CNI plugins bridge, host-local and loopback in /usr/lib/cni (Debian package containernetworking-plugins)",
    );
    let f = Fabric::new(1, "10.160.0.0/16");
    let pm = Podman::new(&f);
    let ids: Vec<(String, String)> = [
        ("a1", "nm-g1"),
        ("a2", "nm-g1"),
        ("b1", "nm-g2"),
        ("b2", "nm-g2"),
    ]
    .iter()
    .map(|(name, net)| (name.to_string(), pm.serve(name, net)))
    .collect();
    let addr: Vec<(String, String)> = ids
        .iter()
        .map(|(n, id)| (n.clone(), addr_of(&f, id)))
        .collect();
    let ip = |n: &str| addr.iter().find(|(m, _)| m == n).unwrap().1.clone();
    // A reference bridge network on the same host at the same time.
    let r = pm.serve("r1", "nmref");
    assert!(!r.is_empty());
    let ref_addr = pm.must(&["exec", "r1", "/bin/ip", "-4", "-o", "addr", "show", "eth0"]);
    assert!(
        ref_addr.contains("10.252.7."),
        "bridge network address: {ref_addr}"
    );

    // Same netgroup reaches, other netgroup is dropped: the dataplane matrix on one host.
    for (from, to, want) in [
        ("a1", "a2", true),
        ("a2", "a1", true),
        ("b1", "b2", true),
        ("b2", "b1", true),
        ("a1", "b1", false),
        ("a2", "b2", false),
        ("b1", "a1", false),
        ("b2", "a2", false),
    ] {
        if want {
            // The server inside may still be starting.
            wait_for(
                std::time::Duration::from_secs(10),
                &format!("{from} -> {to}"),
                || pm.fetches(from, &ip(to)),
            );
        } else {
            assert!(!pm.fetches(from, &ip(to)), "{from} -> {to} must be dropped");
        }
    }

    // `podman stop` / `rm` leave nothing behind.
    for (name, _) in &ids {
        pm.must(&["stop", "-t", "0", name]);
        pm.must(&["rm", name]);
    }
    let out = f.store.netmod(&["-o", "json", "endpoints"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    let links = f.ns_json("h1", "link");
    assert!(
        !links.as_array().unwrap().iter().any(|l| l["ifname"].as_str().unwrap().starts_with("nm") && l["ifname"] != "nmtestref0"),
        "{links}"
    );
    assert!(
        f.set_elements("h1").is_empty(),
        "{:?}",
        f.set_elements("h1")
    );
    let usage: Value =
        serde_json::from_slice(&f.store.netmod(&["-o", "json", "ipam", "show"]).stdout).unwrap();
    assert_eq!(usage["pools"][0]["used"], serde_json::json!(0));
    // The bridge network kept working throughout.
    let names: Vec<&str> = links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("veth")),
        "the reference bridge network's veth is still there: {names:?}"
    );
    assert!(pm
        .must(&["exec", "r1", "/bin/ip", "-4", "-o", "addr", "show", "eth0"])
        .contains("10.252.7."));
    pm.must(&["rm", "-f", "-t", "0", "r1"]);
}
