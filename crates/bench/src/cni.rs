//! `netmod bench cni`: ADD and DEL through the CNI door against the CNI
//! reference plugins (`bridge` + `host-local`), invoked identically in the
//! same run; and `podman run --rm ... true` on a netmod network against a
//! reference bridge network.

use super::dataplane::fabric::{containers, in_ns, other, Fabric, HostNs};
use super::{bench_dir, ms, percentile, render, time_process, BenchArgs, Row};
use crate::BenchError;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BRIDGE: &str = "/usr/lib/cni/bridge";

/// One CNI call, spawned from a thread inside the fake host.
fn cni_call(
    plugin: &Path,
    command: &str,
    id: &str,
    netns: &Path,
    conf: &str,
) -> Result<Duration, BenchError> {
    let mut cmd = Command::new(plugin);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni");
    time_process(cmd, conf.as_bytes())
}

struct Series {
    add: Vec<Duration>,
    del: Vec<Duration>,
}

/// ADD for every container, then DEL for every container, the two plugins
/// alternating call by call so that load on the machine lands on both alike.
fn measure(
    exe: &Path,
    nm: &HostNs,
    br: &HostNs,
    n: usize,
    db: &Path,
    data: &Path,
) -> Result<(Series, Series), BenchError> {
    let nm_conf = |i: usize| {
        json!({"cniVersion": "1.0.0", "name": "nmbench", "type": "netmod", "store": db, "hostname": nm.name,
               "pool": "10.126.0.0/16", "netgroups": [format!("g{}", i % 10)]})
        .to_string()
    };
    let br_conf = json!({"cniVersion": "1.0.0", "name": "nmbenchbr", "type": "bridge", "bridge": "nmbench-br2",
        "isGateway": true, "ipMasq": false,
        "ipam": {"type": "host-local", "subnet": "10.127.0.0/16", "dataDir": data}})
    .to_string();
    let nm_procs = containers(n)?;
    let br_procs = containers(n)?;
    let mut a = Series {
        add: vec![],
        del: vec![],
    };
    let mut b = Series {
        add: vec![],
        del: vec![],
    };
    for command in ["ADD", "DEL"] {
        for i in 0..n {
            let id = format!("c{i}");
            let (nm_conf, ns) = (nm_conf(i), nm_procs.netns(i));
            let t = in_ns(&nm.path(), || cni_call(exe, command, &id, &ns, &nm_conf))?;
            let ns = br_procs.netns(i);
            let u = in_ns(&br.path(), || {
                cni_call(Path::new(BRIDGE), command, &id, &ns, &br_conf)
            })?;
            // The first 10 of each create the netgroups' sets and the bridge: untimed.
            if i >= 10 {
                let (sa, sb) = if command == "ADD" {
                    (&mut a.add, &mut b.add)
                } else {
                    (&mut a.del, &mut b.del)
                };
                sa.push(t);
                sb.push(u);
            }
        }
    }
    Ok((a, b))
}

/// `podman run --rm ... /bin/true` wall times on one network.
fn podman_runs(
    host: &HostNs,
    dir: &Path,
    network: &str,
    runs: usize,
) -> Result<Vec<Duration>, BenchError> {
    let mut times = Vec::new();
    for _ in 0..runs + 2 {
        let out = in_ns(&host.path(), || {
            let start = Instant::now();
            let out = Command::new("podman")
                .arg("--root")
                .arg(dir.join("root"))
                .arg("--runroot")
                .arg(dir.join("runroot"))
                .args(["run", "--rm", "--network", network, "--rootfs"])
                .arg(dir.join("rootfs"))
                .arg("/bin/true")
                .env("CONTAINERS_CONF", dir.join("containers.conf"))
                .output()
                .map_err(|e| other(format!("podman: {e}")))?;
            if !out.status.success() {
                return Err(other(format!(
                    "podman run failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
            Ok(start.elapsed())
        })?;
        times.push(out);
    }
    times.drain(..2); // image-less warm-up: storage set-up, first network use
    times.sort();
    Ok(times)
}

fn podman_dir(exe: &Path, db: &Path, host: &str, dir: &Path) -> Result<(), BenchError> {
    let io = |e: std::io::Error| other(format!("preparing podman files: {e}"));
    for d in [
        "cni",
        "conf",
        "root",
        "runroot",
        "rootfs/bin",
        "rootfs/proc",
        "rootfs/sys",
        "rootfs/dev",
        "rootfs/etc",
    ] {
        std::fs::create_dir_all(dir.join(d)).map_err(io)?;
    }
    std::fs::copy("/bin/busybox", dir.join("rootfs/bin/busybox")).map_err(io)?;
    std::os::unix::fs::symlink("busybox", dir.join("rootfs/bin/true")).map_err(io)?;
    std::os::unix::fs::symlink(exe, dir.join("cni/netmod")).map_err(io)?;
    for p in ["bridge", "host-local", "loopback"] {
        std::os::unix::fs::symlink(Path::new("/usr/lib/cni").join(p), dir.join("cni").join(p))
            .map_err(io)?;
    }
    std::fs::write(
        dir.join("containers.conf"),
        format!(
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n[engine]\nruntime = \"runc\"\n\
             cgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n[network]\nnetwork_backend = \"cni\"\n\
             cni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\n",
            dir.join("cni").display(),
            dir.join("conf").display()
        ),
    )
    .map_err(io)?;
    let nm = json!({"cniVersion": "1.0.0", "name": "nmpod", "plugins": [{"type": "netmod", "store": db, "hostname": host,
        "pool": "10.126.0.0/16", "netgroups": ["web"]}]});
    let br = json!({"cniVersion": "1.0.0", "name": "brpod", "plugins": [{"type": "bridge", "bridge": "nmbench-br3",
        "isGateway": true, "ipMasq": false, "ipam": {"type": "host-local", "subnet": "10.128.0.0/16",
        "dataDir": dir.join("host-local")}}]});
    std::fs::write(dir.join("conf/nmpod.conflist"), nm.to_string()).map_err(io)?;
    std::fs::write(dir.join("conf/brpod.conflist"), br.to_string()).map_err(io)?;
    Ok(())
}

pub fn run(args: &BenchArgs) -> Result<String, BenchError> {
    for (path, pkg) in [
        (BRIDGE, "containernetworking-plugins"),
        ("/usr/bin/podman", "podman"),
        ("/bin/busybox", "busybox-static"),
    ] {
        if !Path::new(path).exists() {
            return Err(other(format!("{path} is missing (apt-get install {pkg})")));
        }
    }
    let exe = crate::netmod_exe().map_err(|e| other(e.to_string()))?;
    let dir = bench_dir()?;
    let db = dir.path().join("cni.db");
    // A connection stays open, as `netmod node` holds one on every host.
    let _held = netmod_store::SqliteStore::open(&db)?;
    let mut fabric = Fabric::new()?;
    let nm = fabric.host("cni")?;
    let br = fabric.host("cnibr")?;
    let n = args.calls.clamp(60, 300);
    eprintln!("bench: CNI ADD/DEL, {n} containers per plugin");
    let (a, b) = measure(&exe, &nm, &br, n, &db, &dir.path().join("host-local"))?;
    // Podman refuses a runroot path longer than 50 characters.
    let pod_dir = super::tempfile_dir::Dir::new("nmpb").map_err(|e| other(e.to_string()))?;
    let pod = pod_dir.path().to_path_buf();
    podman_dir(&exe, &db, &nm.name, &pod)?;
    eprintln!("bench: podman run --rm ... true, 20 runs per network");
    let pod_nm = podman_runs(&nm, &pod, "nmpod", 20)?;
    let pod_br = podman_runs(&nm, &pod, "brpod", 20)?;
    let _ = Command::new("podman")
        .arg("--root")
        .arg(pod.join("root"))
        .arg("--runroot")
        .arg(pod.join("runroot"))
        .args(["rm", "-af"])
        .env("CONTAINERS_CONF", pod.join("containers.conf"))
        .output();
    let _ = Command::new("umount")
        .arg("-R")
        .arg(pod.join("root"))
        .output();
    drop(fabric);

    let mut rows = Vec::new();
    let mut pair = |what: &str, mut x: Vec<Duration>, mut y: Vec<Duration>, base: &str| {
        x.sort();
        y.sort();
        for (p, label) in [(0.5, "p50"), (0.99, "p99")] {
            let (u, v) = (percentile(&x, p), percentile(&y, p));
            rows.push(Row {
                what: format!("{what} {label}"),
                value: ms(u),
                baseline: format!("{base} {label} {}", ms(v)),
                ratio: format!("{:.2}x faster", v.as_secs_f64() / u.as_secs_f64().max(1e-9)),
            });
        }
    };
    pair(
        &format!("netmod CNI ADD ({} calls)", a.add.len()),
        a.add,
        b.add,
        "bridge + host-local ADD",
    );
    pair("netmod CNI DEL", a.del, b.del, "bridge + host-local DEL");
    pair(
        "`podman run --rm ... true`, netmod network (20 runs)",
        pod_nm,
        pod_br,
        "reference bridge network",
    );
    Ok(render(
        "CNI benchmark",
        "How measured: fake hosts are network namespaces on a bridge (`nmbench-<pid>-*`, removed at the end); \
         containers are fresh network namespaces with a process in them, reached as `/proc/<pid>/ns/net`. \
         Each plugin runs as a process spawned from a thread inside its own fake host (no `ip netns exec` in \
         between), with the same environment (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME=eth0`, \
         `CNI_PATH`) and its configuration on stdin; netmod's calls and the baseline's alternate call by call. \
         netmod: embedded SQLite (one connection held open, as `netmod node` does), 10 netgroups, cniVersion 1.0.0; \
         baseline: Debian's `bridge` (isGateway, no masquerade) with `host-local`. The first 10 calls of each are \
         untimed (netgroup sets, bridge creation). Podman 4.3 (CNI backend, runc, busybox rootfs) runs in the \
         netmod fake host; both networks are in the same configuration directory; 2 untimed warm-up runs each.\n",
        &rows,
    ))
}
