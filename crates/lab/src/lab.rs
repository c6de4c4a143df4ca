//! `netmod lab up`, `status` and `down`, for one instance (see
//! [`config::Instance`]).
//!
//! `up` checks first (root, tools, binaries, free names and ports, ranges
//! that overlap nothing the machine routes), then builds in an order that
//! keeps traffic safe: fabric, pool route into the fabric, store and pool,
//! master (which reports the ports it listens on), `netmod node` and an
//! agent per host. A failure part-way tears down what was built. `down`
//! finds everything by name and pid file, so it also cleans up after a
//! crashed or half-built lab; it touches only its own instance's objects.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::auth;
use crate::config::{
    self, LabConfig, MasterPorts, Router, Routing, Topology, DEFAULT_FABRIC, DEFAULT_POOL,
    HOSTS_AS, MARATHON_PORT, MESOS_PORT, OUTSIDE_PORT,
};
use crate::error::{fail, Context, LabError};
use crate::fabric;
use crate::http;
use crate::procs;
use crate::util::{self, unix_now};

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Agent hosts (network namespaces) to create.
    #[arg(long, default_value_t = 2)]
    pub agents: u32,
    /// The address pool tasks get their addresses from; routed into the fabric.
    #[arg(long, default_value = DEFAULT_POOL)]
    pub pool: String,
    /// The fabric's range (bridge and agent host addresses).
    #[arg(long, default_value = DEFAULT_FABRIC)]
    pub fabric: String,
    /// Vanilla Mesos: no network isolator, no `netmod node`, host ports only.
    #[arg(long)]
    pub no_isolator: bool,
    /// Datastore for netmod: `etcd` starts an etcd server inside the lab (its
    /// own namespace and address on the fabric) and every host uses only it;
    /// a path or `etcd://...` uses that store; default: the lab's own SQLite file.
    #[arg(long)]
    pub store: Option<String>,
    /// CPUs each agent offers.
    #[arg(long, default_value_t = 4.0)]
    pub agent_cpus: f64,
    /// Memory (MB) each agent offers.
    #[arg(long, default_value_t = 4096.0)]
    pub agent_mem: f64,
    /// Marathon's port on 127.0.0.1; 0: the system chooses (`lab status`
    /// shows it). Default: 8080 for the default lab, 0 for any other.
    #[arg(long, value_name = "PORT")]
    pub marathon_port: Option<u16>,
    /// The Mesos page's port on 127.0.0.1 (and on the bridge, for the
    /// agents); 0: the system chooses. Default: 5050 for the default lab, 0
    /// for any other.
    #[arg(long, value_name = "PORT")]
    pub mesos_port: Option<u16>,
    /// `flat`: every agent on the bridge. `routed`: the fabric split in two
    /// subnets, odd agents on the bridge's, even agents behind a router
    /// namespace that holds no pool route, and an "outside" namespace beyond
    /// the router with a web server on 198.51.100.1:80 (the pool is added
    /// with `--nat-outgoing`, so tasks reach it).
    #[arg(long, value_enum, default_value_t = Topology::Flat)]
    pub topology: Topology,
    /// With `--topology routed`: how pool traffic crosses the router.
    /// `vxlan` (the default): the pool is `--vxlan-mode Always`. `bgp`: every
    /// `netmod node` runs with `--bgp`, the router runs BIRD 2 and peers with
    /// each host (`netmod bgp peer add`), the pool is `--vxlan-mode Never`.
    #[arg(long, value_enum)]
    pub routing: Option<Routing>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// The lab's config as JSON (names, addresses, the master's ports, the
    /// store), for scripts.
    #[arg(long)]
    pub json: bool,
}

/// The star binaries the demo runs, next to the netmod executable.
pub const STAR_BINARIES: [&str; 2] = ["star-probe", "star-collect"];

/// This program (`netmod-lab`) and the `netmod` beside it.
fn executables() -> Result<(PathBuf, PathBuf), LabError> {
    let me = std::env::current_exe().context(|| "cannot find the netmod-lab executable".into())?;
    let netmod = me.with_file_name("netmod");
    if !netmod.is_file() {
        return fail(format!(
            "{} is missing: the lab runs the netmod found next to netmod-lab (cargo build -p netmod)",
            netmod.display()
        ));
    }
    Ok((me, netmod))
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).is_ok()
}

fn lab_exists() -> bool {
    LabConfig::path().exists()
        || fabric::present(config::current())
            .is_ok_and(|p| !p.namespaces.is_empty() || !p.links.is_empty())
}

/// Marker of the lab's own processes in their command lines (see
/// [`procs::is_ours`]).
fn marker(role: &str) -> String {
    format!("lab --name {} {role}", config::current().name())
}

/// `netmod-lab lab --name <lab> ROLE ARGS...`: how the lab starts its own processes.
fn lab_argv(cfg: &LabConfig, role: &str, args: &[&str]) -> Vec<String> {
    [
        &cfg.lab_exe.display().to_string(),
        "lab",
        "--name",
        &cfg.name,
        role,
    ]
    .into_iter()
    .chain(args.iter().copied())
    .map(str::to_string)
    .collect()
}

/// `netmod lab up`.
pub fn up(args: &UpArgs) -> Result<(), LabError> {
    let lab = config::current();
    if !util::is_root() {
        return fail("the lab makes network namespaces and routes: run it as root");
    }
    if lab_exists() {
        return fail(format!(
            "the lab {:?} is already up (see `netmod lab --name {} status`); run `netmod lab --name {} down` first",
            lab.name(),
            lab.name(),
            lab.name()
        ));
    }
    let (lab_exe, netmod) = executables()?;
    let bin_dir = lab_exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for b in STAR_BINARIES {
        if !bin_dir.join(b).is_file() {
            return fail(format!(
                "{} is missing: the lab runs the star binaries found next to netmod \
                 (build them: cargo build --release -p star)",
                bin_dir.join(b).display()
            ));
        }
    }
    let (default_marathon, default_mesos) = if lab.is_default() {
        (MARATHON_PORT, MESOS_PORT)
    } else {
        (0, 0)
    };
    let listen = MasterPorts {
        marathon: args.marathon_port.unwrap_or(default_marathon),
        mesos: args.mesos_port.unwrap_or(default_mesos),
        fabric: args.mesos_port.unwrap_or(default_mesos),
    };
    if listen.marathon != 0 && listen.marathon == listen.mesos {
        return fail(format!(
            "--marathon-port and --mesos-port are both {}: they need a port each",
            listen.mesos
        ));
    }
    for port in [listen.marathon, listen.mesos] {
        if port != 0 && !port_free(port) {
            return fail(format!(
                "127.0.0.1:{port} is taken by another program; the lab's master needs it \
                 (choose another with --marathon-port / --mesos-port, or 0 for any)"
            ));
        }
    }
    let fabric_net: Ipv4Net = args
        .fabric
        .parse()
        .context(|| format!("--fabric {}: not an IPv4 CIDR", args.fabric))?;
    let fabric_net = fabric_net.trunc();
    let pool: Option<Ipv4Net> = if args.no_isolator {
        None
    } else {
        let p: Ipv4Net = args
            .pool
            .parse()
            .context(|| format!("--pool {}: not an IPv4 CIDR", args.pool))?;
        Some(p.trunc())
    };
    fabric::check_ranges(&fabric::machine_routes()?, &fabric_net, pool.as_ref())?;
    let routing = match (args.topology, args.routing) {
        (Topology::Flat, Some(r)) => {
            return fail(format!(
                "--routing {r} is for --topology routed (a flat fabric routes the pool directly)"
            ))
        }
        (Topology::Routed, Some(Routing::Bgp)) if args.no_isolator => {
            return fail("--routing bgp needs netmod (not --no-isolator): the hosts speak BGP")
        }
        (_, r) => r.unwrap_or_default(),
    };
    let (bridge_ip, agents, router) = match args.topology {
        Topology::Flat => {
            let (b, a) = fabric::plan(lab, &fabric_net, args.agents)?;
            (b, a, None)
        }
        Topology::Routed => {
            let (b, a, r) = fabric::plan_routed(lab, &fabric_net, args.agents, routing)?;
            (b, a, Some(r))
        }
    };
    if router.as_ref().is_some_and(|r| r.routing == Routing::Bgp) {
        let bird = Command::new(BIRD).arg("--version").output();
        if !bird.is_ok_and(|o| o.status.success()) {
            return fail("--routing bgp needs BIRD 2: bird is missing (apt-get install bird2)");
        }
    }
    let etcd_ip = (args.store.as_deref() == Some("etcd")).then(|| fabric::etcd_ip(&fabric_net));
    if etcd_ip.is_some() && !Path::new(ETCD_BIN).is_file() {
        return fail(format!(
            "--store etcd needs {ETCD_BIN} (apt-get install etcd-server)"
        ));
    }
    let nft = Command::new("nft").arg("--version").output();
    if !nft.is_ok_and(|o| o.status.success()) {
        return fail(
            "the lab guards each agent's control port with nftables: nft is missing \
             (apt-get install nftables)",
        );
    }
    let mut namespaces: Vec<String> = agents.iter().map(|a| a.name.clone()).collect();
    let mut links: Vec<String> = agents.iter().map(|a| a.root_veth.clone()).collect();
    links.push(lab.bridge());
    if etcd_ip.is_some() {
        namespaces.push(lab.etcd_ns());
        links.push(lab.etcd_veth());
    }
    if let Some(r) = &router {
        namespaces.extend([r.ns.clone(), r.outside_ns.clone()]);
        links.push(r.veth.clone());
    }
    fabric::check_free(&namespaces, &links)?;

    // Checked: from here on, everything built is torn down on failure.
    let run_dir = config::run_dir();
    for dir in [
        run_dir.clone(),
        config::pid_dir(),
        config::log_dir(),
        config::sandbox_root(),
    ] {
        fs::create_dir_all(&dir).context(|| format!("cannot create {}", dir.display()))?;
    }
    let star_dir = run_dir.join("star");
    let (store, store_owned) = match (&args.store, etcd_ip) {
        (_, Some(ip)) => (
            format!("etcd://{ip}:{ETCD_PORT}?prefix=/netmod-lab/"),
            false,
        ),
        (Some(s), None) => (absolute_store(s)?, false),
        (None, None) => (config::default_store().display().to_string(), true),
    };
    let mut cfg = LabConfig {
        name: lab.name().to_string(),
        run_id: util::random_hex(4),
        run_dir,
        fabric: fabric_net.to_string(),
        bridge: lab.bridge(),
        bridge_ip,
        agents,
        pool: pool.map(|p| p.to_string()),
        isolator: !args.no_isolator,
        store,
        store_owned,
        netmod,
        lab_exe,
        star_dir,
        agent_cpus: args.agent_cpus,
        agent_mem: args.agent_mem,
        created_at: unix_now(),
        listen,
        ports: None,
        topology: args.topology,
        router,
    };
    let built = cfg.save().and_then(|()| build(&mut cfg, &bin_dir, etcd_ip));
    match built {
        Ok(()) => {
            print_summary(&cfg);
            Ok(())
        }
        Err(e) => {
            eprintln!("netmod lab up failed: {e}\nremoving what was built ...");
            let _ = down_quiet();
            Err(e)
        }
    }
}

/// Debian's etcd server, and where the lab's listens.
const ETCD_BIN: &str = "/usr/bin/etcd";
const ETCD_PORT: u16 = 2379;

/// An etcd server in a namespace of its own on the fabric: every host
/// reaches it over the fabric, nothing is shared through the filesystem.
fn start_etcd(cfg: &LabConfig, ip: std::net::Ipv4Addr) -> Result<(), LabError> {
    let lab = config::current();
    let ns = lab.etcd_ns();
    fabric::create_service_host(cfg, &ns, &lab.etcd_veth(), ip, prefix(cfg))?;
    let data = config::run_dir().join("etcd");
    let client = format!("http://{ip}:{ETCD_PORT}");
    let argv: Vec<String> = [
        "ip",
        "netns",
        "exec",
        &ns,
        ETCD_BIN,
        "--name",
        lab.name(),
        "--data-dir",
        &data.display().to_string(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        // Peers on the namespace's own loopback: no other lab's etcd sees it.
        "--listen-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-cluster",
        &format!("{}=http://127.0.0.1:2380", lab.name()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    procs::spawn_daemon("etcd", &argv)?;
    wait_for("etcd", Duration::from_secs(15), || {
        http::request(
            "GET",
            &format!("{client}/health"),
            None,
            Duration::from_secs(1),
        )
        .is_ok_and(|r| r.status == 200)
    })
    .map_err(|e| LabError::new(format!("{e}\n{}", procs::log_tail("etcd", 10))))?;
    say(format!("etcd: {client} (namespace {ns})"));
    Ok(())
}

/// A `--store` path relative to where `lab up` runs, made absolute: every
/// netmod command the lab runs, and the `NETMOD_STORE` line it prints, must
/// name the same file from anywhere.
fn absolute_store(store: &str) -> Result<String, LabError> {
    if store.contains("://") || Path::new(store).is_absolute() {
        return Ok(store.to_string());
    }
    let cwd = std::env::current_dir().context(|| "cannot read the current directory".into())?;
    Ok(cwd.join(store).display().to_string())
}

/// The shell line that makes every `netmod` command see the lab's store
/// (`eval` it, or paste it): `export NETMOD_STORE=…`, quoted for the shell
/// where needed. Without the isolator netmod keeps no store for the lab:
/// then a comment saying so (harmless to `eval` too).
pub fn store_export(cfg: &LabConfig) -> String {
    if !cfg.isolator {
        return "# no isolator: netmod keeps no store for this lab (no NETMOD_STORE to set)"
            .to_string();
    }
    format!("export NETMOD_STORE={}", shell_quote(&cfg.store))
}

/// `s` as one shell word: bare when it is plainly safe, else single-quoted.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'_' | b'@' | b'%' | b'+' | b'=' | b':' | b',' | b'.' | b'/' | b'-'
                )
        });
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn build(
    cfg: &mut LabConfig,
    bin_dir: &Path,
    etcd_ip: Option<std::net::Ipv4Addr>,
) -> Result<(), LabError> {
    // The secret the master and the agents prove themselves with (see
    // `auth`): made before either starts, readable by root only.
    auth::Token::create(&config::token_file())?;
    // The seed's /star directory: the star binaries (linked), and room for
    // the files the demo's apps fetch.
    fs::create_dir_all(&cfg.star_dir).context(|| "cannot create the star directory".into())?;
    for b in STAR_BINARIES {
        let link = cfg.star_dir.join(b);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(bin_dir.join(b), &link)
            .context(|| format!("cannot link {}", link.display()))?;
    }
    // The demo's resource files, as the seed's image had them; the demo
    // scripts copy the current ones from demo/marathon/ over these.
    for (name, text) in crate::demo::RESOURCE_FILES {
        let path = cfg.star_dir.join(name);
        fs::write(&path, text).context(|| format!("cannot write {}", path.display()))?;
    }
    say(format!(
        "fabric: bridge {} {}/{}",
        cfg.bridge,
        cfg.bridge_ip,
        cfg.bridge_prefix()
    ));
    fabric::create(cfg)?;
    if let Some(r) = &cfg.router {
        say(format!(
            "router: namespace {} ({} on the bridge's subnet {}, {} on the second subnet {}, \
             {} to the outside); forwards, holds no pool route{}",
            r.ns,
            r.ip_a,
            r.subnet_a,
            r.ip_b,
            r.subnet_b,
            config::OUTSIDE_ROUTER,
            if r.routing == Routing::Bgp {
                " but what BIRD learns"
            } else {
                ""
            }
        ));
        say(format!(
            "route: {} via {} (the second subnet)",
            r.subnet_b, r.ip_a
        ));
        start_outside(cfg, r)?;
    }
    for a in &cfg.agents {
        // Before the agent listens: its control port is the master's only.
        fabric::guard_control_port(cfg, a)?;
        say(format!(
            "host {}: {}/{} (namespace {}, default route via {}; control port {} from {} only)",
            a.name,
            a.ip,
            cfg.agent_link(a).0,
            a.name,
            cfg.agent_link(a).1,
            config::AGENT_PORT,
            cfg.bridge_ip
        ));
    }
    if let Some(ip) = etcd_ip {
        start_etcd(cfg, ip)?;
    }
    if let Some(r) = cfg.router.as_ref().filter(|r| r.routing == Routing::Bgp) {
        start_router_bird(cfg, r)?;
    }
    if let Some(pool) = &cfg.pool {
        // Before any task runs: pool traffic from the machine goes into the
        // fabric, never to the machine's default route.
        fabric::route_pool(cfg)?;
        say(format!(
            "route: {pool} via {} ({})",
            cfg.pool_gateway()
                .map(|g| g.to_string())
                .unwrap_or_default(),
            match cfg.router.as_ref().map(|r| r.routing) {
                None => "into the fabric",
                Some(Routing::Vxlan) => "agent 1 hands the machine's packets into the overlay",
                Some(Routing::Bgp) => "the router, which learns every host's blocks",
            }
        ));
        let flags = pool_flags(cfg);
        let out = Command::new(&cfg.netmod)
            .args(["--store", &cfg.store, "pool", "add", pool])
            .args(&flags)
            .output()
            .context(|| "cannot run netmod pool add".into())?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() && !text.contains("already") {
            return fail(format!("netmod pool add {pool} failed: {}", text.trim()));
        }
        say(format!(
            "pool: {pool}{} in the store {}",
            if flags.is_empty() {
                String::new()
            } else {
                format!(" ({})", flags.join(" "))
            },
            cfg.store
        ));
        if let Some(r) = cfg.router.as_ref().filter(|r| r.routing == Routing::Bgp) {
            // Before any node starts: the hosts peer with the router only
            // (each reaches the router's address on its own subnet).
            for addr in [r.ip_a, r.ip_b] {
                let asn = r.asn.to_string();
                let addr = addr.to_string();
                let out = Command::new(&cfg.netmod)
                    .args(["--store", &cfg.store, "bgp", "peer", "add", &addr])
                    .args(["--as", &asn, "--description", "the lab's router"])
                    .output()
                    .context(|| "cannot run netmod bgp peer add".into())?;
                if !out.status.success() {
                    return fail(format!(
                        "netmod bgp peer add {addr} failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
            }
            say(format!(
                "bgp: every host peers with the router ({} and {}, AS {}; the hosts are AS {HOSTS_AS})",
                r.ip_a, r.ip_b, r.asn
            ));
        }
    }
    start_master(cfg)?;
    let exe = cfg.netmod.display().to_string();
    for a in &cfg.agents {
        let in_ns = |argv: Vec<String>| -> Vec<String> {
            ["ip", "netns", "exec", a.name.as_str()]
                .into_iter()
                .map(str::to_string)
                .chain(argv)
                .collect()
        };
        if cfg.isolator {
            let metrics = format!("127.0.0.1:{}", config::NODE_METRICS_PORT);
            let ip = a.ip.to_string();
            let mut node: Vec<String> = [
                exe.as_str(),
                "--store",
                &cfg.store,
                "node",
                "--hostname",
                &a.name,
                "--host-ip",
                &ip,
                "--metrics-addr",
                &metrics,
            ]
            .into_iter()
            .map(str::to_string)
            .collect();
            node.extend(node_bgp_args(cfg, a));
            procs::spawn_daemon(&format!("node-{}", a.index), &in_ns(node))?;
        }
        let index = a.index.to_string();
        procs::spawn_daemon(
            &format!("agent-{}", a.index),
            &in_ns(lab_argv(cfg, "agent", &["--index", &index])),
        )?;
    }
    let want = cfg.agents.len();
    let mesos = cfg.mesos_url()?;
    wait_for("the agents to register", Duration::from_secs(15), || {
        registered_agents(&mesos) >= want
    })
    .map_err(|e| {
        let tails: Vec<String> = cfg
            .agents
            .iter()
            .map(|a| {
                format!(
                    "agent-{}: {}",
                    a.index,
                    procs::log_tail(&format!("agent-{}", a.index), 5)
                )
            })
            .collect();
        LabError::new(format!("{e}\n{}", tails.join("\n")))
    })?;
    if cfg.isolator {
        // `netmod node` must stay up: it routes other hosts' blocks and keeps policy.
        thread::sleep(Duration::from_millis(300));
        for a in &cfg.agents {
            let name = format!("node-{}", a.index);
            if !procs::read_pid(&name).is_some_and(procs::alive) {
                return fail(format!(
                    "netmod node on {} exited: {}",
                    a.name,
                    procs::log_tail(&name, 8)
                ));
            }
        }
        say("node: netmod node runs on every host".to_string());
    }
    Ok(())
}

/// Starts the master, waits until it reports the ports it listens on and
/// answers there, and records those ports in the lab's config (which the
/// agents read next).
fn start_master(cfg: &mut LabConfig) -> Result<(), LabError> {
    let _ = fs::remove_file(config::master_ports_file());
    procs::spawn_daemon("master", &lab_argv(cfg, "master", &[]))?;
    let master_failed =
        |e: LabError| LabError::new(format!("{e}\n{}", procs::log_tail("master", 10)));
    let ports = wait_for_value("the master to listen", Duration::from_secs(10), || {
        let text = fs::read_to_string(config::master_ports_file()).ok()?;
        serde_json::from_str::<MasterPorts>(&text).ok()
    })
    .map_err(master_failed)?;
    cfg.ports = Some(ports);
    let health = format!("{}/health", cfg.mesos_url()?);
    wait_for("the master", Duration::from_secs(10), || {
        http::request("GET", &health, None, Duration::from_secs(1)).is_ok_and(|r| r.status == 200)
    })
    .map_err(master_failed)?;
    cfg.save()?;
    say(format!(
        "master: Marathon {}/  Mesos {}/  (agents: {})",
        cfg.marathon_url()?,
        cfg.mesos_url()?,
        cfg.master_url()?
    ));
    Ok(())
}

fn prefix(cfg: &LabConfig) -> u8 {
    cfg.bridge_prefix()
}

/// Debian's BIRD 2.
const BIRD: &str = "bird";

/// `netmod pool add` flags: routed, the pool crosses the router in VXLAN
/// (or is routed by BGP) and its tasks reach the outside through NAT.
pub fn pool_flags(cfg: &LabConfig) -> Vec<String> {
    let mode = match cfg.router.as_ref().map(|r| r.routing) {
        None => return Vec::new(),
        Some(Routing::Vxlan) => "Always",
        Some(Routing::Bgp) => "Never",
    };
    ["--vxlan-mode", mode, "--nat-outgoing"]
        .map(str::to_string)
        .to_vec()
}

/// Where an agent's node keeps BIRD's file and socket (the namespaces share
/// the machine's filesystem: one pair per host, in the lab's run directory).
fn bird_paths(agent: &config::AgentHost) -> (PathBuf, PathBuf) {
    let dir = config::run_dir().join("bird");
    (
        dir.join(format!("agent-{}.conf", agent.index)),
        dir.join(format!("agent-{}.ctl", agent.index)),
    )
}

/// `netmod node` flags for BGP (routed with `--routing bgp`), else none.
fn node_bgp_args(cfg: &LabConfig, agent: &config::AgentHost) -> Vec<String> {
    if !cfg
        .router
        .as_ref()
        .is_some_and(|r| r.routing == Routing::Bgp)
    {
        return Vec::new();
    }
    let (conf, sock) = bird_paths(agent);
    vec![
        "--bgp".into(),
        "--bgp-as".into(),
        HOSTS_AS.to_string(),
        "--bird-config".into(),
        conf.display().to_string(),
        "--bird-socket".into(),
        sock.display().to_string(),
    ]
}

/// The router's BIRD: one eBGP session per agent host, from the router's
/// address on that host's subnet; it takes only prefixes of the pool (the
/// hosts' blocks), installs them in its kernel table and passes them on to
/// the other hosts (next hop: itself).
pub fn router_bird_conf(cfg: &LabConfig, r: &Router) -> String {
    let pool = cfg.pool.as_deref().unwrap_or("0.0.0.0/0");
    let mut o = format!(
        "# Written by netmod lab up: the router of the routed topology.\n\
         log stderr all;\n\
         router id {};\n\
         protocol device {{ scan time 10; }}\n\
         protocol kernel {{\n  ipv4 {{ import none; export where source = RTS_BGP; }};\n}}\n",
        r.ip_a
    );
    for a in &cfg.agents {
        let (local, _) = r.gateway_for(a.ip);
        o.push_str(&format!(
            "\nprotocol bgp agent_{i} {{\n  description \"{name}\";\n  local {local} as {asn};\n  \
             neighbor {ip} as {HOSTS_AS};\n  hold time 3;\n  keepalive time 1;\n  \
             connect retry time 1;\n  graceful restart off;\n  \
             ipv4 {{ import where net ~ [ {pool}+ ]; export where source = RTS_BGP; }};\n}}\n",
            i = a.index,
            name = a.name,
            asn = r.asn,
            ip = a.ip,
        ));
    }
    o
}

fn router_bird_paths() -> (PathBuf, PathBuf) {
    let dir = config::run_dir().join("router");
    (dir.join("bird.conf"), dir.join("bird.ctl"))
}

/// BIRD in the router's namespace, a lab process (`router-bird`).
fn start_router_bird(cfg: &LabConfig, r: &Router) -> Result<(), LabError> {
    let (conf, sock) = router_bird_paths();
    if let Some(dir) = conf.parent() {
        fs::create_dir_all(dir).context(|| format!("cannot create {}", dir.display()))?;
    }
    fs::write(&conf, router_bird_conf(cfg, r))
        .context(|| format!("cannot write {}", conf.display()))?;
    let argv: Vec<String> = [
        "ip",
        "netns",
        "exec",
        &r.ns,
        BIRD,
        "-f",
        "-c",
        &conf.display().to_string(),
        "-s",
        &sock.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    procs::spawn_daemon("router-bird", &argv)?;
    let birdc = || {
        Command::new("ip")
            .args(["netns", "exec", &r.ns, "birdc", "-s"])
            .arg(&sock)
            .arg("show status")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    wait_for("BIRD on the router", Duration::from_secs(10), birdc)
        .map_err(|e| LabError::new(format!("{e}\n{}", procs::log_tail("router-bird", 10))))?;
    say(format!(
        "router: BIRD 2 (AS {}), {}, one session per host",
        r.asn,
        conf.display()
    ));
    Ok(())
}

/// The outside's web server: a lab process in the outside namespace.
fn start_outside(cfg: &LabConfig, r: &Router) -> Result<(), LabError> {
    let listen = format!("{}:{OUTSIDE_PORT}", r.outside_ip);
    let inner = lab_argv(cfg, "outside", &["--listen", &listen]);
    let argv: Vec<String> = ["ip", "netns", "exec", &r.outside_ns]
        .into_iter()
        .map(str::to_string)
        .chain(inner)
        .collect();
    procs::spawn_daemon("outside", &argv)?;
    wait_for("the outside web server", Duration::from_secs(10), || {
        procs::log_tail("outside", 5).contains("listening on")
    })
    .map_err(|e| LabError::new(format!("{e}\n{}", procs::log_tail("outside", 10))))?;
    say(format!(
        "outside: namespace {}, http://{listen}/ (outside every pool; default route via the router)",
        r.outside_ns
    ));
    Ok(())
}

/// `netmod-lab lab outside --listen ADDR`: the outside's web server. Every
/// answer is JSON naming the server and the address the request came from
/// (`{"server": "outside", "you": "10.234.0.11"}`): behind NAT, a task's
/// host's address.
pub fn outside_server(listen: std::net::SocketAddr) -> Result<(), LabError> {
    use std::io::{Read, Write};
    let listener =
        std::net::TcpListener::bind(listen).context(|| format!("cannot listen on {listen}"))?;
    println!("outside: listening on {listen}");
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = thread::Builder::new().spawn(move || {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(3)));
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16384 {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let you = conn
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let body = serde_json::json!({"server": "outside", "you": you}).to_string();
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        });
    }
    Ok(())
}

fn say(line: String) {
    println!("  {line}");
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Result<(), LabError> {
    wait_for_value(what, limit, || ok().then_some(()))
}

fn wait_for_value<T>(
    what: &str,
    limit: Duration,
    mut get: impl FnMut() -> Option<T>,
) -> Result<T, LabError> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(v) = get() {
            return Ok(v);
        }
        thread::sleep(Duration::from_millis(50));
    }
    fail(format!(
        "timed out after {}s waiting for {what}",
        limit.as_secs()
    ))
}

fn master_state(mesos: &str) -> Option<Value> {
    http::get_json(
        &format!("{mesos}/master/state.json"),
        Duration::from_secs(2),
    )
    .ok()
}

fn registered_agents(mesos: &str) -> usize {
    master_state(mesos)
        .and_then(|s| s["activated_slaves"].as_u64())
        .unwrap_or(0) as usize
}

fn print_summary(cfg: &LabConfig) {
    let url = |u: Result<String, LabError>| u.unwrap_or_else(|e| e.to_string());
    let name_flag = if config::current().is_default() {
        String::new()
    } else {
        format!("--name {} ", cfg.name)
    };
    println!(
        "lab {:?} up: {} agent(s){}.\n  Marathon: {}/\n  Mesos:    {}/\n  `netmod lab {name_flag}status` shows it, `netmod lab {name_flag}down` removes it.",
        cfg.name,
        cfg.agents.len(),
        match &cfg.router {
            Some(r) => format!(
                " on two subnets behind the router {} ({}; the outside at http://{}:{OUTSIDE_PORT}/)",
                r.ns, r.routing, r.outside_ip
            ),
            None => String::new(),
        } + &if cfg.isolator {
            format!(", tasks with ipAddress get addresses from {}", cfg.pool.as_deref().unwrap_or("?"))
        } else {
            " without the network isolator (host ports only)".into()
        },
        url(cfg.marathon_url()),
        url(cfg.mesos_url()),
    );
    print_store_export(cfg);
}

/// The last lines of `lab up`, `lab status` and `demo --keep`: how every
/// netmod command gets to see the lab's store.
pub fn print_store_export(cfg: &LabConfig) {
    if cfg.isolator {
        println!("  For every netmod command to use the lab's store (`netmod endpoints`, `netmod explain` …):");
    }
    println!("{}", store_export(cfg));
}

/// `netmod lab status`.
pub fn status(args: &StatusArgs) -> Result<(), LabError> {
    let lab = config::current();
    let cfg = match LabConfig::load() {
        Ok(c) => c,
        Err(e) => {
            let left = fabric::present(lab)?;
            if args.json {
                return Err(e);
            }
            if left.is_empty() && procs::recorded().is_empty() {
                println!("no lab {:?} is up", lab.name());
                return Ok(());
            }
            println!(
                "no config for the lab {:?}, but leftovers exist (run `netmod lab --name {} down`): {left:?}",
                lab.name(),
                lab.name()
            );
            return Ok(());
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&cfg).expect("plain data")
        );
        return Ok(());
    }
    println!(
        "lab {} ({}; fabric {} bridge {} {}, {}, store {})",
        cfg.name,
        cfg.run_id,
        cfg.fabric,
        cfg.bridge,
        cfg.bridge_ip,
        if cfg.isolator {
            format!(
                "pool {} routed via {}",
                cfg.pool.as_deref().unwrap_or("-"),
                cfg.pool_gateway()
                    .map(|g| g.to_string())
                    .unwrap_or_default()
            )
        } else {
            "no isolator".into()
        },
        cfg.store
    );
    if let Some(r) = &cfg.router {
        println!(
            "topology:   routed ({}): router {} ({} on {}, {} on {}), outside {} http://{}:{OUTSIDE_PORT}/",
            r.routing, r.ns, r.ip_a, r.subnet_a, r.ip_b, r.subnet_b, r.outside_ns, r.outside_ip
        );
    }
    match (cfg.marathon_url(), cfg.mesos_url(), cfg.master_url()) {
        (Ok(marathon), Ok(mesos), Ok(agents)) => {
            println!("master:     Marathon {marathon}/  Mesos {mesos}/  (agents: {agents})")
        }
        _ => println!("master:     no ports recorded (it never listened)"),
    }
    println!("run dir:    {}", cfg.run_dir.display());
    println!("processes:");
    for (name, pid) in procs::recorded() {
        let state = if procs::alive(pid) {
            "running"
        } else {
            "EXITED"
        };
        println!(
            "  {name:<10} pid {pid:<8} {state}   log {}",
            procs::log_file(&name).display()
        );
    }
    let present = fabric::present(lab)?;
    println!("namespaces: {}", present.namespaces.join(" "));
    println!("links:      {}", present.links.join(" "));
    println!("routes:     {}", present.routes.join("; "));
    let state = cfg.mesos_url().ok().and_then(|m| master_state(&m));
    match state {
        None => println!("master: not answering"),
        Some(s) => {
            for a in s["slaves"].as_array().into_iter().flatten() {
                println!(
                    "agent {} {} active={} used cpus {} mem {} ports {}",
                    a["hostname"].as_str().unwrap_or(""),
                    a["pid"].as_str().unwrap_or(""),
                    a["active"],
                    a["used_resources"]["cpus"],
                    a["used_resources"]["mem"],
                    a["used_resources"]["ports"].as_str().unwrap_or("")
                );
            }
            let tasks = s["frameworks"][0]["tasks"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            println!("tasks: {} active", tasks.len());
            for t in tasks {
                println!(
                    "  {:<50} {:<14} {}",
                    t["id"].as_str().unwrap_or(""),
                    t["state"].as_str().unwrap_or(""),
                    t["hostname"].as_str().unwrap_or("")
                );
            }
        }
    }
    print_store_export(&cfg);
    Ok(())
}

/// `netmod lab down`.
pub fn down() -> Result<(), LabError> {
    if !util::is_root() {
        return fail("removing the lab needs root");
    }
    let left = down_quiet()?;
    if left.is_empty() {
        println!(
            "lab down: nothing of the lab {:?} is left",
            config::current().name()
        );
        Ok(())
    } else {
        fail(format!("lab down left: {}", left.join("; ")))
    }
}

/// Removes everything of the current instance; returns what could not be
/// removed.
pub fn down_quiet() -> Result<Vec<String>, LabError> {
    let lab = config::current();
    let cfg = LabConfig::load().ok();
    let pool = cfg.as_ref().and_then(|c| c.pool.clone());
    // The master first, so nothing is relaunched; then the agents, which
    // stop their tasks (release + cleanup each); then netmod node.
    procs::stop("master", &marker("master"), Duration::from_secs(3));
    let mut agents: Vec<(String, u32)> = procs::recorded()
        .into_iter()
        .filter(|(n, _)| n.starts_with("agent-"))
        .collect();
    agents.sort();
    // All agents at once: each stops its own tasks in parallel.
    let agent_marker = marker("agent");
    let stoppers: Vec<_> = agents
        .into_iter()
        .map(|(name, _)| {
            let m = agent_marker.clone();
            thread::spawn(move || procs::stop(&name, &m, Duration::from_secs(25)))
        })
        .collect();
    for s in stoppers {
        let _ = s.join();
    }
    // Anything the agents left: task processes (marked by their sandbox),
    // then every process inside the lab's namespaces.
    procs::kill_all(&procs::task_pids());
    let nodes: Vec<(String, u32)> = procs::recorded()
        .into_iter()
        .filter(|(n, _)| n.starts_with("node-"))
        .collect();
    for (name, _) in nodes {
        procs::stop(&name, "node", Duration::from_secs(5));
    }
    let namespaces = fabric::present(lab)
        .map(|p| p.namespaces)
        .unwrap_or_default();
    if let Some(cfg) = &cfg {
        // netmod's own cleanup of what it made in each host namespace.
        for a in &cfg.agents {
            if namespaces.contains(&a.name) {
                let _ = Command::new("timeout")
                    .args(["10", "ip", "netns", "exec", &a.name])
                    .arg(&cfg.netmod)
                    .args(["--store", &cfg.store, "node", "--uninstall"])
                    .args(node_bgp_args(cfg, a))
                    .output();
            }
        }
    }
    // The router's BIRD and the outside's web server.
    let (router_conf, _) = router_bird_paths();
    procs::stop(
        "router-bird",
        &router_conf.display().to_string(),
        Duration::from_secs(5),
    );
    procs::stop("outside", &marker("outside"), Duration::from_secs(3));
    // The lab's etcd last: the agents' release and cleanup calls needed it.
    procs::stop("etcd", "etcd", Duration::from_secs(5));
    for ns in &namespaces {
        procs::kill_all(&procs::netns_pids(ns));
    }
    let mut problems = fabric::destroy(lab, pool.as_deref());
    // The store, if it is the lab's own.
    if let Some(cfg) = &cfg {
        if cfg.store_owned {
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let _ = fs::remove_file(format!("{}{suffix}", cfg.store));
            }
        }
    }
    let leftovers_procs: Vec<String> = procs::recorded()
        .into_iter()
        .filter(|(_, pid)| procs::alive(*pid))
        .map(|(n, pid)| format!("process {n} ({pid})"))
        .collect();
    problems.extend(leftovers_procs);
    let tasks = procs::task_pids();
    if !tasks.is_empty() {
        problems.push(format!("task processes {tasks:?}"));
    }
    match fabric::present(lab) {
        Ok(p) if !p.is_empty() => problems.push(format!("kernel objects {p:?}")),
        Ok(_) => {}
        Err(e) => problems.push(e.to_string()),
    }
    if problems.is_empty() {
        let _ = fs::remove_dir_all(config::run_dir());
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn cfg(store: &str, isolator: bool) -> LabConfig {
        serde_json::from_value(serde_json::json!({
            "name": "t1", "run_id": "x", "run_dir": "/run/netmod-lab-t1", "fabric": "10.9.0.0/24",
            "bridge": "t1-br0", "bridge_ip": "10.9.0.1", "agents": [], "pool": null,
            "isolator": isolator, "store": store, "store_owned": true, "netmod": "/n",
            "lab_exe": "/l", "star_dir": "/run/netmod-lab-t1/star", "agent_cpus": 1.0,
            "agent_mem": 1.0, "created_at": 0.0,
            "listen": {"marathon": 0, "mesos": 0, "fabric": 0}, "ports": null
        }))
        .unwrap()
    }

    /// What `sh` makes of `eval "$line"; printf %s "$NETMOD_STORE"`.
    fn eval(line: &str) -> String {
        let out = Command::new("sh")
            .args([
                "-c",
                "eval \"$1\"; printf %s \"${NETMOD_STORE-unset}\"",
                "sh",
                line,
            ])
            .env_remove("NETMOD_STORE")
            .output()
            .unwrap();
        assert!(out.status.success(), "{line}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn the_store_export_line_evals_to_the_store() {
        let line = store_export(&cfg("/run/netmod-lab/netmod.db", true));
        assert_eq!(line, "export NETMOD_STORE=/run/netmod-lab/netmod.db");
        for store in [
            "/run/netmod-lab/netmod.db",
            "etcd://10.234.0.5:2379?prefix=/netmod-lab/",
            "/tmp/a dir/it's $HOME * here.db",
        ] {
            assert_eq!(eval(&store_export(&cfg(store, true))), store);
        }
        // Without the isolator there is no store: a comment, which sets nothing.
        let none = store_export(&cfg("/run/netmod-lab/netmod.db", false));
        assert!(none.starts_with('#'), "{none}");
        assert_eq!(eval(&none), "unset");
    }

    #[test]
    fn a_config_without_a_topology_is_flat() {
        let c = cfg("/s.db", true);
        assert_eq!(c.topology, Topology::Flat);
        assert!(c.router.is_none() && pool_flags(&c).is_empty());
    }

    #[test]
    fn the_routed_lab_adds_its_pool_and_the_routers_bird() {
        let mut c = cfg("/s.db", true);
        c.fabric = "10.9.0.0/24".into();
        c.pool = Some("192.168.0.0/16".into());
        let lab = config::Instance::new("t1").unwrap();
        let fabric = "10.9.0.0/24".parse().unwrap();
        let (_, agents, r) = fabric::plan_routed(&lab, &fabric, 2, Routing::Bgp).unwrap();
        c.agents = agents;
        c.router = Some(r.clone());
        c.topology = Topology::Routed;
        assert_eq!(pool_flags(&c), ["--vxlan-mode", "Never", "--nat-outgoing"]);
        assert_eq!(c.pool_gateway(), Some(r.ip_a));
        let conf = router_bird_conf(&c, &r);
        for want in [
            "router id 10.9.0.2;",
            "protocol bgp agent_1 {",
            "local 10.9.0.2 as 64513;\n  neighbor 10.9.0.11 as 64512;",
            "local 10.9.0.129 as 64513;\n  neighbor 10.9.0.140 as 64512;",
            "import where net ~ [ 192.168.0.0/16+ ];",
            "export where source = RTS_BGP;",
        ] {
            assert!(conf.contains(want), "no {want:?} in\n{conf}");
        }
        let mut v = c.clone();
        v.router = Some(config::Router {
            routing: Routing::Vxlan,
            ..r
        });
        assert_eq!(pool_flags(&v), ["--vxlan-mode", "Always", "--nat-outgoing"]);
        assert_eq!(v.pool_gateway(), Some(v.agents[0].ip));
        let bird = Command::new(BIRD).arg("--version").output();
        if bird.is_ok_and(|o| o.status.success()) {
            let dir = std::env::temp_dir().join(format!("nmlab-bird-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join("bird.conf");
            std::fs::write(&file, &conf).unwrap();
            let out = Command::new(BIRD)
                .arg("-p")
                .arg("-c")
                .arg(&file)
                .output()
                .unwrap();
            let _ = std::fs::remove_dir_all(&dir);
            assert!(
                out.status.success(),
                "bird -p: {}\n{conf}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn a_relative_store_becomes_absolute() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            absolute_store("x/netmod.db").unwrap(),
            cwd.join("x/netmod.db").display().to_string()
        );
        for kept in ["/var/lib/n.db", "etcd://10.0.0.1:2379", "sqlite://rel.db"] {
            assert_eq!(absolute_store(kept).unwrap(), kept);
        }
    }
}
