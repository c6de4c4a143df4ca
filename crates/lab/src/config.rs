//! Which lab this is, and what `lab up` decided for it.
//!
//! A lab is an *instance* with a name (`--name`, or `NETMOD_LAB`; default
//! `nmlab`). The name prefixes everything the instance creates — network
//! namespaces, interfaces, its run directory (pid files, logs, sandboxes,
//! the default store) — so several labs can share a machine and `lab down`
//! removes only its own. The default instance keeps the names the README
//! and the demo scripts use: `nmlab-*`, `/run/netmod-lab`, ports 8080 and
//! 5050. Any other instance lets the system choose the master's ports.
//!
//! What `lab up` decided is written to `<run dir>/lab.json`, so that the
//! master, the agents, `lab status` and `lab down` all read the same facts;
//! the master adds the ports it actually listens on once it does.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::{fail, Context, LabError};

/// The default instance's name, and so the prefix of today's names.
pub const DEFAULT_NAME: &str = "nmlab";
/// The environment variable that names the instance when `--name` does not.
pub const NAME_ENV: &str = "NETMOD_LAB";
/// The default instance's run directory (tmpfs); another instance's is
/// this with `-<name>` appended.
pub const RUN_DIR: &str = "/run/netmod-lab";
/// An agent host's fabric interface, inside its namespace (which is the
/// lab's own). Not `nm…`: inside a host, names starting with `nm` belong to
/// netmod, whose node removes the ones it does not know.
pub const HOST_IF: &str = "eth0";
/// Default fabric range (`--fabric`).
pub const DEFAULT_FABRIC: &str = "10.234.0.0/24";
/// Default address pool (`--pool`), the seed's.
pub const DEFAULT_POOL: &str = "192.168.0.0/16";
/// Marathon's API and page (the default instance's; others: the system's choice).
pub const MARATHON_PORT: u16 = 8080;
/// The Mesos-like state API and page (the default instance's; others: the system's choice).
pub const MESOS_PORT: u16 = 5050;
/// Each agent's API, on its fabric address.
pub const AGENT_PORT: u16 = 5051;
/// `netmod node --metrics-addr` inside each agent namespace.
pub const NODE_METRICS_PORT: u16 = 9102;
/// Host ports each agent offers: `ports(*):[9000-31100]`.
pub const PORT_RANGE: (u16, u16) = (9000, 31100);
/// The routed topology's "outside": a namespace beyond the router with an
/// address outside every pool (TEST-NET-2), and the router's address there.
pub const OUTSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const OUTSIDE_ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
pub const OUTSIDE_PREFIX: u8 = 24;
/// The outside web server's port.
pub const OUTSIDE_PORT: u16 = 80;
/// With `--routing bgp`: the router's AS, and the hosts' (netmod's default).
pub const ROUTER_AS: u32 = 64513;
pub const HOSTS_AS: u32 = 64512;
/// Longest instance name.
pub const MAX_NAME: usize = 32;
/// Longest interface prefix: `<prefix>-setcd` must fit IFNAMSIZ - 1 = 15.
const MAX_IF_PREFIX: usize = 9;

/// One lab instance's names, all derived from its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    name: String,
    /// Prefix of the interfaces in the machine's namespace: the name when it
    /// is short enough, else its first characters and a hash of it.
    if_prefix: String,
}

impl Instance {
    /// Checks a name: 1 to 32 of `a-z`, `0-9` and `-`, starting with a
    /// letter, not ending with `-`.
    pub fn new(name: &str) -> Result<Instance, LabError> {
        let ok_chars = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let first_letter = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
        if !ok_chars || !first_letter || name.ends_with('-') || name.len() > MAX_NAME {
            return fail(format!(
                "{name:?} is not a lab name: use 1 to {MAX_NAME} lowercase letters, digits \
                 and hyphens, starting with a letter and not ending with a hyphen"
            ));
        }
        let if_prefix = if name.len() <= MAX_IF_PREFIX {
            name.to_string()
        } else {
            let head: String = name.chars().take(4).collect();
            format!(
                "{}{:05x}",
                head.trim_end_matches('-'),
                fnv1a(name) & 0xf_ffff
            )
        };
        Ok(Instance {
            name: name.to_string(),
            if_prefix,
        })
    }

    pub fn default_instance() -> Instance {
        Instance::new(DEFAULT_NAME).expect("a valid name")
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_default(&self) -> bool {
        self.name == DEFAULT_NAME
    }

    /// `/run/netmod-lab` for the default instance, `/run/netmod-lab-<name>`
    /// for another.
    pub fn run_dir(&self) -> PathBuf {
        if self.is_default() {
            PathBuf::from(RUN_DIR)
        } else {
            PathBuf::from(format!("{RUN_DIR}-{}", self.name))
        }
    }

    /// The fabric bridge in the machine's namespace.
    pub fn bridge(&self) -> String {
        format!("{}-br0", self.if_prefix)
    }

    /// Agent host N's namespace, also its host name for netmod.
    pub fn agent_ns(&self, index: u32) -> String {
        format!("{}-agent-{index}", self.name)
    }

    /// Agent host N's veth end in the machine's namespace, on the bridge.
    pub fn agent_veth(&self, index: u32) -> String {
        format!("{}-v{index}", self.if_prefix)
    }

    /// The namespace of the lab's etcd (with `lab up --store etcd`).
    pub fn etcd_ns(&self) -> String {
        format!("{}-etcd", self.name)
    }

    /// The etcd namespace's veth end in the machine's namespace.
    pub fn etcd_veth(&self) -> String {
        format!("{}-setcd", self.if_prefix)
    }

    /// The router's namespace (`--topology routed`).
    pub fn router_ns(&self) -> String {
        format!("{}-router", self.name)
    }

    /// The namespace beyond the router, "outside" the cluster.
    pub fn outside_ns(&self) -> String {
        format!("{}-outside", self.name)
    }

    /// The router's veth end in the machine's namespace, on the bridge.
    pub fn router_veth(&self) -> String {
        format!("{}-rtr", self.if_prefix)
    }

    /// Whether a network namespace is one this instance creates.
    pub fn owns_netns(&self, ns: &str) -> bool {
        match ns
            .strip_prefix(self.name.as_str())
            .and_then(|r| r.strip_prefix('-'))
        {
            Some("etcd" | "router" | "outside") => true,
            Some(rest) => rest.strip_prefix("agent-").is_some_and(all_digits),
            None => false,
        }
    }

    /// Whether a link in the machine's namespace is one this instance creates.
    pub fn owns_link(&self, link: &str) -> bool {
        match link
            .strip_prefix(self.if_prefix.as_str())
            .and_then(|r| r.strip_prefix('-'))
        {
            Some("br0" | "setcd" | "rtr") => true,
            Some(rest) => rest.strip_prefix('v').is_some_and(all_digits),
            None => false,
        }
    }
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// FNV-1a, 32 bits: stable across releases and machines.
fn fnv1a(s: &str) -> u32 {
    s.bytes()
        .fold(0x811c_9dc5, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

static CURRENT: OnceLock<Instance> = OnceLock::new();

/// Chooses the instance this process works on; done once, from `--name`,
/// before anything reads [`current`].
pub fn select(instance: Instance) -> Result<(), LabError> {
    let chosen = CURRENT.get_or_init(|| instance.clone());
    if *chosen != instance {
        return fail(format!(
            "this process already works on the lab {:?}, not {:?}",
            chosen.name(),
            instance.name()
        ));
    }
    Ok(())
}

/// The instance this process works on (the default one unless [`select`]ed).
pub fn current() -> &'static Instance {
    CURRENT.get_or_init(Instance::default_instance)
}

/// Where the master listens: Marathon and Mesos on 127.0.0.1, Mesos also
/// on the bridge address for the agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterPorts {
    pub marathon: u16,
    pub mesos: u16,
    pub fabric: u16,
}

/// `lab up --topology`: every agent on the bridge, or on two subnets
/// behind a router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// One subnet: the bridge (today's lab).
    #[default]
    Flat,
    /// Two subnets behind a router namespace that holds no pool route, and
    /// an "outside" namespace beyond it.
    Routed,
}

/// `lab up --routing`: how the routed topology carries pool traffic
/// between the subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// The pool is `--vxlan-mode Always`: the router sees only the hosts'
    /// addresses.
    #[default]
    Vxlan,
    /// `netmod node --bgp` on every host; the router runs BIRD and learns
    /// every host's blocks.
    Bgp,
}

impl std::fmt::Display for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Routing::Vxlan => "vxlan",
            Routing::Bgp => "bgp",
        })
    }
}

/// The routed topology's router and the "outside" beyond it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Router {
    /// `<lab>-router`.
    pub ns: String,
    /// Its veth end in the machine's namespace, on the bridge: `<lab>-rtr`.
    pub veth: String,
    /// The bridge's subnet (the fabric's first half: the machine, the odd
    /// agents, etcd) and the router's address there.
    pub subnet_a: String,
    pub ip_a: Ipv4Addr,
    /// The second subnet (the fabric's second half: the even agents, on a
    /// bridge `br1` inside the router's namespace) and the router's address there.
    pub subnet_b: String,
    pub ip_b: Ipv4Addr,
    /// `<lab>-outside`, with the web server on [`OUTSIDE_ADDR`].
    pub outside_ns: String,
    pub outside_ip: Ipv4Addr,
    pub routing: Routing,
    /// With BGP: the router's AS (the hosts are in [`HOSTS_AS`]).
    pub asn: u32,
}

impl Router {
    /// The router's address on the subnet of `ip`, and that subnet's prefix.
    pub fn gateway_for(&self, ip: Ipv4Addr) -> (Ipv4Addr, u8) {
        let a: ipnet::Ipv4Net = self.subnet_a.parse().expect("planned");
        let b: ipnet::Ipv4Net = self.subnet_b.parse().expect("planned");
        if a.contains(&ip) {
            (self.ip_a, a.prefix_len())
        } else {
            (self.ip_b, b.prefix_len())
        }
    }

    /// Whether `ip` is on the second subnet (behind the router).
    pub fn on_b(&self, ip: Ipv4Addr) -> bool {
        self.subnet_b
            .parse::<ipnet::Ipv4Net>()
            .is_ok_and(|b| b.contains(&ip))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentHost {
    pub index: u32,
    /// Namespace name, also the host name given to netmod: `<lab>-agent-N`.
    pub name: String,
    pub ip: Ipv4Addr,
    /// The veth end in the machine's namespace, on the bridge.
    pub root_veth: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabConfig {
    /// The instance's name.
    pub name: String,
    pub run_id: String,
    pub run_dir: PathBuf,
    pub fabric: String,
    pub bridge: String,
    pub bridge_ip: Ipv4Addr,
    pub agents: Vec<AgentHost>,
    /// The pool routed into the fabric (None with `--no-isolator`).
    pub pool: Option<String>,
    pub isolator: bool,
    /// `--store` value handed to every netmod command.
    pub store: String,
    /// Whether the lab made the store (and so removes it on `down`).
    pub store_owned: bool,
    /// The `netmod` executable: `mesos`, `node`, `pool` (what Mesos would run).
    pub netmod: PathBuf,
    /// The `netmod-lab` executable: the lab's own processes (master, agents,
    /// task shims).
    pub lab_exe: PathBuf,
    /// The seed's `/star` directory: star binaries and staged files.
    pub star_dir: PathBuf,
    pub agent_cpus: f64,
    pub agent_mem: f64,
    pub created_at: f64,
    /// The ports the master was asked to listen on (0: the system's choice).
    pub listen: MasterPorts,
    /// The ports it listens on, once it does.
    pub ports: Option<MasterPorts>,
    /// `--topology` (absent in older configs: flat).
    #[serde(default)]
    pub topology: Topology,
    /// The router and the outside, with `--topology routed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<Router>,
}

impl LabConfig {
    /// The current instance's config file.
    pub fn path() -> PathBuf {
        current().run_dir().join("lab.json")
    }

    pub fn load() -> Result<LabConfig, LabError> {
        let path = Self::path();
        let text = std::fs::read_to_string(&path).context(|| {
            format!(
                "no lab {:?} is up ({} is unreadable)",
                current().name(),
                path.display()
            )
        })?;
        serde_json::from_str(&text).context(|| format!("{} is not a lab config", path.display()))
    }

    /// Writes the config (whole, or not at all: a reader never sees half).
    pub fn save(&self) -> Result<(), LabError> {
        let text = serde_json::to_string_pretty(self).expect("plain data");
        write_atomic(&self.run_dir.join("lab.json"), text.as_bytes())
    }

    /// An agent host's prefix length on its subnet and its default gateway:
    /// the bridge's subnet and address on a flat fabric; behind a router,
    /// its subnet's and the router's address there.
    pub fn agent_link(&self, a: &AgentHost) -> (u8, Ipv4Addr) {
        match &self.router {
            Some(r) => {
                let (gw, prefix) = r.gateway_for(a.ip);
                (prefix, gw)
            }
            None => (self.fabric_prefix(), self.bridge_ip),
        }
    }

    /// The prefix length of the bridge's subnet (the fabric's, or its first
    /// half behind a router).
    pub fn bridge_prefix(&self) -> u8 {
        match &self.router {
            Some(r) => r
                .subnet_a
                .parse::<ipnet::Ipv4Net>()
                .map(|n| n.prefix_len())
                .unwrap_or(25),
            None => self.fabric_prefix(),
        }
    }

    fn fabric_prefix(&self) -> u8 {
        self.fabric
            .parse::<ipnet::Ipv4Net>()
            .map(|n| n.prefix_len())
            .unwrap_or(24)
    }

    /// Where the machine routes the pool: agent 1 (flat, and routed VXLAN:
    /// it hands the machine's packets into the overlay), or the router
    /// (routed BGP: it has learned every host's blocks).
    pub fn pool_gateway(&self) -> Option<Ipv4Addr> {
        match &self.router {
            Some(r) if r.routing == Routing::Bgp => Some(r.ip_a),
            _ => self.agents.first().map(|a| a.ip),
        }
    }

    pub fn agent(&self, index: u32) -> Option<&AgentHost> {
        self.agents.iter().find(|a| a.index == index)
    }

    fn ports(&self) -> Result<MasterPorts, LabError> {
        self.ports.ok_or_else(|| {
            LabError::new(format!(
                "the lab {:?} has no master listening yet",
                self.name
            ))
        })
    }

    /// The master as the agents reach it, over the fabric.
    pub fn master_url(&self) -> Result<String, LabError> {
        Ok(format!(
            "http://{}:{}",
            self.bridge_ip,
            self.ports()?.fabric
        ))
    }

    /// Marathon's API and page, on the machine's loopback.
    pub fn marathon_url(&self) -> Result<String, LabError> {
        Ok(format!("http://127.0.0.1:{}", self.ports()?.marathon))
    }

    /// The Mesos-like state and page, on the machine's loopback.
    pub fn mesos_url(&self) -> Result<String, LabError> {
        Ok(format!("http://127.0.0.1:{}", self.ports()?.mesos))
    }
}

/// Writes `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), LabError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data).context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).context(|| format!("cannot write {}", path.display()))
}

pub fn run_dir() -> PathBuf {
    current().run_dir()
}
pub fn pid_dir() -> PathBuf {
    run_dir().join("pids")
}
pub fn log_dir() -> PathBuf {
    run_dir().join("logs")
}
pub fn sandbox_root() -> PathBuf {
    run_dir().join("sandboxes")
}
/// Where the master writes the ports it listens on, for `lab up`.
pub fn master_ports_file() -> PathBuf {
    run_dir().join("master-ports.json")
}
/// The lab's control token (see [`crate::auth`]); never in `lab.json`.
pub fn token_file() -> PathBuf {
    run_dir().join(crate::auth::TOKEN_FILE)
}
/// The default store: the lab's own SQLite file.
pub fn default_store() -> PathBuf {
    run_dir().join("netmod.db")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_instance_keeps_todays_names() {
        let d = Instance::default_instance();
        assert_eq!(d.run_dir(), PathBuf::from("/run/netmod-lab"));
        assert_eq!(d.bridge(), "nmlab-br0");
        assert_eq!(d.agent_ns(2), "nmlab-agent-2");
        assert_eq!(d.agent_veth(1), "nmlab-v1");
        assert_eq!(d.etcd_ns(), "nmlab-etcd");
        assert_eq!(d.etcd_veth(), "nmlab-setcd");
        assert_eq!(d.router_ns(), "nmlab-router");
        assert_eq!(d.outside_ns(), "nmlab-outside");
        assert_eq!(d.router_veth(), "nmlab-rtr");
    }

    #[test]
    fn names_are_checked_and_interfaces_fit() {
        for bad in ["", "A", "1ab", "a_b", "a-", "a.b", &"a".repeat(33)] {
            let e = Instance::new(bad).unwrap_err().to_string();
            assert!(e.contains("is not a lab name"), "{bad:?}: {e}");
        }
        for name in [
            "t",
            "lab-1",
            "abcdefghi",
            "abcdefghij",
            "a-b-c-d-e-f",
            &"z".repeat(32),
        ] {
            let i = Instance::new(name).unwrap();
            for link in [
                i.bridge(),
                i.agent_veth(200),
                i.etcd_veth(),
                i.router_veth(),
            ] {
                assert!(link.len() <= 15, "{name}: {link}");
                assert!(i.owns_link(&link), "{name}: {link}");
            }
            assert_eq!(
                i.run_dir(),
                PathBuf::from(format!("/run/netmod-lab-{name}"))
            );
            assert!(i.agent_ns(3).starts_with(name));
            // Derived, not random.
            assert_eq!(Instance::new(name).unwrap(), i);
        }
        // Long names get a hashed prefix; different names, different prefixes.
        let (a, b) = (
            Instance::new("test-before-1").unwrap(),
            Instance::new("test-before-2").unwrap(),
        );
        assert_ne!(a.bridge(), b.bridge());
        assert!(a.bridge().starts_with("test"), "{}", a.bridge());
    }

    #[test]
    fn an_instance_owns_only_its_own_objects() {
        let d = Instance::default_instance();
        let x = Instance::new("nmlab-x").unwrap();
        let agent = Instance::new("nmlab-agent").unwrap();
        assert!(d.owns_netns("nmlab-agent-1") && d.owns_netns("nmlab-etcd"));
        assert!(d.owns_netns("nmlab-router") && d.owns_netns("nmlab-outside"));
        assert!(d.owns_link("nmlab-rtr"));
        assert!(d.owns_link("nmlab-v12") && d.owns_link("nmlab-br0"));
        for other in [&x, &agent] {
            for ns in [
                other.agent_ns(1),
                other.etcd_ns(),
                other.router_ns(),
                other.outside_ns(),
            ] {
                assert!(!d.owns_netns(&ns), "{ns}");
                assert!(other.owns_netns(&ns), "{ns}");
            }
            for link in [
                other.bridge(),
                other.agent_veth(1),
                other.etcd_veth(),
                other.router_veth(),
            ] {
                assert!(!d.owns_link(&link), "{link}");
            }
            assert!(!other.owns_netns("nmlab-agent-1"));
            assert!(!other.owns_link("nmlab-v1") && !other.owns_link("nmlab-br0"));
        }
        for foreign in [
            "nmlab-agent-",
            "nmlab-agent-1x",
            "nmlab-v",
            "nmlab-br1",
            "eth0",
        ] {
            assert!(!d.owns_netns(foreign) && !d.owns_link(foreign), "{foreign}");
        }
    }
}
