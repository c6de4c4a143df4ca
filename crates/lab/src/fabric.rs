//! The fabric: a bridge `<lab>-br0` in the machine's namespace, one namespace
//! `<lab>-agent-N` per agent host joined to it by a veth `<lab>-vN`, and (with
//! the isolator) the pool routed from the machine into the fabric via agent 1.
//! With `--topology routed`: the fabric split in two subnets, a router
//! namespace `<lab>-router` between them (veth `<lab>-rtr` on the bridge,
//! the second subnet's bridge inside it) and an outside namespace
//! `<lab>-outside` beyond it.
//!
//! Everything here goes through the `ip` command: the lab is a harness, and
//! only netmod's own dataplane talks netlink. Every object carries its
//! instance's name (see [`Instance`]) so `lab down` finds its own and only
//! its own.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::config::{
    AgentHost, Instance, LabConfig, Router, Routing, AGENT_PORT, HOST_IF, OUTSIDE_ADDR,
    OUTSIDE_PREFIX, OUTSIDE_ROUTER, ROUTER_AS,
};
use crate::error::{fail, Context, LabError};

/// Runs `ip ARGS`, returning stdout; the error carries ip's own message.
pub fn ip(args: &[&str]) -> Result<String, LabError> {
    run("ip", args)
}

fn run(prog: &str, args: &[&str]) -> Result<String, LabError> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .context(|| format!("cannot run {prog} (is iproute2 installed?)"))?;
    if !out.status.success() {
        return fail(format!(
            "`{prog} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip_json(args: &[&str]) -> Result<Vec<Value>, LabError> {
    let text = ip(args)?;
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(&text)
        .context(|| format!("`ip {}` printed no JSON", args.join(" ")))?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// A route the machine has: its destination and how `ip` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub dst: Ipv4Net,
    pub shown: String,
}

/// The machine's IPv4 routes (every table but `local`; not the default route,
/// which overlaps everything and is what the lab must never fall through to).
pub fn machine_routes() -> Result<Vec<Route>, LabError> {
    let mut routes = Vec::new();
    for r in ip_json(&["-4", "-j", "route", "show", "table", "all"])? {
        if r["table"].as_str() == Some("local") {
            continue;
        }
        let Some(dst) = r["dst"].as_str() else {
            continue;
        };
        if dst == "default" {
            continue;
        }
        let net = if dst.contains('/') {
            dst.parse::<Ipv4Net>()
        } else {
            format!("{dst}/32").parse::<Ipv4Net>()
        };
        let Ok(net) = net else { continue };
        let mut shown = dst.to_string();
        if let Some(gw) = r["gateway"].as_str() {
            shown += &format!(" via {gw}");
        }
        if let Some(dev) = r["dev"].as_str() {
            shown += &format!(" dev {dev}");
        }
        routes.push(Route { dst: net, shown });
    }
    Ok(routes)
}

pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Refuses a fabric or pool that overlaps a route the machine already has,
/// or each other (pure: takes the routes).
pub fn check_ranges(
    routes: &[Route],
    fabric: &Ipv4Net,
    pool: Option<&Ipv4Net>,
) -> Result<(), LabError> {
    if let Some(pool) = pool {
        if overlaps(fabric, pool) {
            return fail(format!(
                "the pool {pool} overlaps the fabric {fabric}; choose another --pool or --fabric"
            ));
        }
    }
    let ranges = [
        ("fabric", Some(fabric), "--fabric"),
        ("pool", pool, "--pool"),
    ];
    for (what, net, flag) in ranges {
        let Some(net) = net else { continue };
        if let Some(r) = routes.iter().find(|r| overlaps(&r.dst, net)) {
            return fail(format!(
                "the {what} {net} overlaps the route `{}` this machine already has; \
                 the lab will not shadow it: choose another range with {flag}",
                r.shown
            ));
        }
    }
    Ok(())
}

/// The fabric's addresses: the bridge takes the first host address, agent N
/// takes the 10+N-th.
pub fn plan(
    lab: &Instance,
    fabric: &Ipv4Net,
    agents: u32,
) -> Result<(Ipv4Addr, Vec<AgentHost>), LabError> {
    if fabric.prefix_len() > 26 {
        return fail(format!(
            "the fabric {fabric} is too small (use a /26 or larger)"
        ));
    }
    let base = u32::from(fabric.network());
    let room = (1u64 << (32 - fabric.prefix_len())) - 12;
    if agents == 0 || agents as u64 > room.min(200) {
        return fail(format!("--agents must be between 1 and {}", room.min(200)));
    }
    let bridge_ip = Ipv4Addr::from(base + 1);
    let hosts = (1..=agents)
        .map(|i| AgentHost {
            index: i,
            name: lab.agent_ns(i),
            ip: Ipv4Addr::from(base + 10 + i),
            root_veth: lab.agent_veth(i),
        })
        .collect();
    Ok((bridge_ip, hosts))
}

/// `--topology routed`: the fabric split in two halves. The first is the
/// bridge's subnet: the machine (the bridge's address, the first), etcd,
/// the router (the second address) and the odd agents; the second is behind
/// the router (its first address), with the even agents. Agent N takes the
/// 10+N-th address of its half.
pub fn plan_routed(
    lab: &Instance,
    fabric: &Ipv4Net,
    agents: u32,
    routing: Routing,
) -> Result<(Ipv4Addr, Vec<AgentHost>, Router), LabError> {
    if fabric.prefix_len() > 25 {
        return fail(format!(
            "the fabric {fabric} is too small for --topology routed (use a /25 or larger: \
             it is split in two subnets)"
        ));
    }
    let halves: Vec<Ipv4Net> = fabric
        .subnets(fabric.prefix_len() + 1)
        .expect("a valid prefix")
        .collect();
    let (a, b) = (halves[0], halves[1]);
    let room = (1u64 << (32 - a.prefix_len())) - 12;
    if agents == 0 || agents as u64 > room.min(200) {
        return fail(format!("--agents must be between 1 and {}", room.min(200)));
    }
    let at = |net: &Ipv4Net, n: u32| Ipv4Addr::from(u32::from(net.network()) + n);
    let hosts = (1..=agents)
        .map(|i| AgentHost {
            index: i,
            name: lab.agent_ns(i),
            ip: at(if i % 2 == 1 { &a } else { &b }, 10 + i),
            root_veth: lab.agent_veth(i),
        })
        .collect();
    let router = Router {
        ns: lab.router_ns(),
        veth: lab.router_veth(),
        subnet_a: a.to_string(),
        ip_a: at(&a, 2),
        subnet_b: b.to_string(),
        ip_b: at(&b, 1),
        outside_ns: lab.outside_ns(),
        outside_ip: OUTSIDE_ADDR,
        routing,
        asn: ROUTER_AS,
    };
    Ok((at(&a, 1), hosts, router))
}

/// The etcd server's own address on the fabric, below the agents'.
pub fn etcd_ip(fabric: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(fabric.network()) + 5)
}

/// Refuses to build over anything that already carries one of the names
/// the lab is about to create, whoever made it.
pub fn check_free(namespaces: &[String], links: &[String]) -> Result<(), LabError> {
    let have_ns: Vec<String> = ip_json(&["-j", "netns", "list"])?
        .iter()
        .filter_map(|n| n["name"].as_str().map(str::to_string))
        .collect();
    let have_links: Vec<String> = ip_json(&["-j", "link", "show"])?
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect();
    let taken: Vec<String> = namespaces
        .iter()
        .filter(|n| have_ns.contains(n))
        .map(|n| format!("namespace {n}"))
        .chain(
            links
                .iter()
                .filter(|l| have_links.contains(l))
                .map(|l| format!("link {l}")),
        )
        .collect();
    if !taken.is_empty() {
        return fail(format!(
            "{} already exist(s) on this machine; the lab will not take them over \
             (another lab? see `netmod lab --name ... status`)",
            taken.join(", ")
        ));
    }
    Ok(())
}

/// A namespace on the fabric for a lab service (not an agent host).
pub fn create_service_host(
    cfg: &LabConfig,
    ns: &str,
    veth: &str,
    addr: Ipv4Addr,
    prefix: u8,
) -> Result<(), LabError> {
    ip(&["netns", "add", ns])?;
    ip(&[
        "link", "add", veth, "type", "veth", "peer", "name", HOST_IF, "netns", ns,
    ])?;
    ip(&["link", "set", veth, "master", &cfg.bridge, "up"])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{addr}/{prefix}"),
        "dev",
        HOST_IF,
    ])?;
    ip(&["-n", ns, "link", "set", HOST_IF, "up"])?;
    Ok(())
}

/// Creates the bridge, the router and the outside (routed), and every
/// agent host namespace.
pub fn create(cfg: &LabConfig) -> Result<(), LabError> {
    let bridge_addr = format!("{}/{}", cfg.bridge_ip, cfg.bridge_prefix());
    let bridge = cfg.bridge.as_str();
    ip(&["link", "add", bridge, "type", "bridge"])?;
    ip(&["addr", "add", &bridge_addr, "dev", bridge])?;
    ip(&["link", "set", bridge, "up"])?;
    if let Some(r) = &cfg.router {
        create_router(cfg, r)?;
    }
    for a in &cfg.agents {
        let ns = a.name.as_str();
        let (prefix, gw) = cfg.agent_link(a);
        let addr = format!("{}/{prefix}", a.ip);
        let gw = gw.to_string();
        ip(&["netns", "add", ns])?;
        match &cfg.router {
            // Behind the router: on its second subnet's bridge, inside its
            // namespace (the machine has no leg there).
            Some(r) if r.on_b(a.ip) => {
                ip(&[
                    "-n",
                    &r.ns,
                    "link",
                    "add",
                    &a.root_veth,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    HOST_IF,
                    "netns",
                    ns,
                ])?;
                ip(&[
                    "-n",
                    &r.ns,
                    "link",
                    "set",
                    &a.root_veth,
                    "master",
                    ROUTER_B_BRIDGE,
                    "up",
                ])?;
            }
            _ => {
                ip(&[
                    "link",
                    "add",
                    &a.root_veth,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    HOST_IF,
                    "netns",
                    ns,
                ])?;
                ip(&["link", "set", &a.root_veth, "master", bridge, "up"])?;
            }
        }
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "addr", "add", &addr, "dev", HOST_IF])?;
        ip(&["-n", ns, "link", "set", HOST_IF, "up"])?;
        // Proxy ARP for 169.254.1.1 answers only when the host has a route
        // to it through another interface: the default route gives one.
        ip(&[
            "-n", ns, "route", "add", "default", "via", &gw, "dev", HOST_IF,
        ])?;
        // An agent host forwards for its tasks.
        run(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )?;
    }
    Ok(())
}

/// The second subnet's bridge, inside the router's namespace.
pub const ROUTER_B_BRIDGE: &str = "br1";
/// The router's leg to the outside, inside its namespace.
pub const ROUTER_OUT_IF: &str = "out";

fn sysctl_in(ns: &str, setting: &str) -> Result<(), LabError> {
    run("ip", &["netns", "exec", ns, "sysctl", "-qw", setting]).map(|_| ())
}

/// The router: a namespace with a leg on the bridge (the first subnet), a
/// bridge of its own for the second subnet, and a leg to the outside; it
/// forwards between the three and holds no route into any pool (with BGP,
/// only what BIRD learns). The outside: a namespace at [`OUTSIDE_ADDR`]
/// whose only route is its default, via the router. The machine routes the
/// second subnet via the router (through the bridge, so the route goes with
/// it); it has no route to the outside.
fn create_router(cfg: &LabConfig, r: &Router) -> Result<(), LabError> {
    let a: Ipv4Net = r.subnet_a.parse().expect("planned");
    let b: Ipv4Net = r.subnet_b.parse().expect("planned");
    let ns = r.ns.as_str();
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&[
        "link", "add", &r.veth, "type", "veth", "peer", "name", HOST_IF, "netns", ns,
    ])?;
    ip(&["link", "set", &r.veth, "master", &cfg.bridge, "up"])?;
    let addr_a = format!("{}/{}", r.ip_a, a.prefix_len());
    ip(&["-n", ns, "addr", "add", &addr_a, "dev", HOST_IF])?;
    ip(&["-n", ns, "link", "set", HOST_IF, "up"])?;
    ip(&["-n", ns, "link", "add", ROUTER_B_BRIDGE, "type", "bridge"])?;
    let addr_b = format!("{}/{}", r.ip_b, b.prefix_len());
    ip(&["-n", ns, "addr", "add", &addr_b, "dev", ROUTER_B_BRIDGE])?;
    ip(&["-n", ns, "link", "set", ROUTER_B_BRIDGE, "up"])?;
    // A router; replies to the machine come back by another way than the
    // machine's packets went (through agent 1's overlay), so no reverse-path
    // filter.
    for s in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ] {
        sysctl_in(ns, s)?;
    }
    let out = r.outside_ns.as_str();
    ip(&["netns", "add", out])?;
    ip(&["-n", out, "link", "set", "lo", "up"])?;
    ip(&[
        "-n",
        ns,
        "link",
        "add",
        ROUTER_OUT_IF,
        "type",
        "veth",
        "peer",
        "name",
        HOST_IF,
        "netns",
        out,
    ])?;
    let router_out = format!("{OUTSIDE_ROUTER}/{OUTSIDE_PREFIX}");
    ip(&["-n", ns, "addr", "add", &router_out, "dev", ROUTER_OUT_IF])?;
    ip(&["-n", ns, "link", "set", ROUTER_OUT_IF, "up"])?;
    let outside = format!("{}/{OUTSIDE_PREFIX}", r.outside_ip);
    ip(&["-n", out, "addr", "add", &outside, "dev", HOST_IF])?;
    ip(&["-n", out, "link", "set", HOST_IF, "up"])?;
    ip(&[
        "-n",
        out,
        "route",
        "add",
        "default",
        "via",
        &OUTSIDE_ROUTER.to_string(),
    ])?;
    ip(&[
        "route",
        "add",
        &r.subnet_b,
        "via",
        &r.ip_a.to_string(),
        "dev",
        &cfg.bridge,
    ])?;
    Ok(())
}

/// The routes of a namespace as `ip -j route` shows them.
pub fn routes_in(ns: &str) -> Result<Vec<Value>, LabError> {
    ip_json(&["-n", ns, "-4", "-j", "route", "show"])
}

/// The nftables table the lab adds to each agent host (netmod's own is
/// `inet netmod`; neither touches the other's).
pub const GUARD_TABLE: &str = "netmod_lab";

/// The rules that keep an agent's control port to the master: a connection
/// to it is taken only over the fabric interface, from the bridge address
/// (where the master's connections come from); every other one — from the
/// host's own tasks (through their veths, or over `lo` for host-network
/// tasks), from tasks and hosts elsewhere on the fabric — is reset.
pub fn control_port_rules(bridge_ip: Ipv4Addr, agent: &AgentHost) -> String {
    let port = AGENT_PORT;
    format!(
        "add table inet {GUARD_TABLE}\n\
         delete table inet {GUARD_TABLE}\n\
         table inet {GUARD_TABLE} {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority -10; policy accept;\n\
         \t\ttcp dport {port} iifname \"{HOST_IF}\" ip saddr {bridge_ip} ip daddr {ip} accept \
         comment \"the lab's master, over the fabric\"\n\
         \t\ttcp dport {port} reject with tcp reset \
         comment \"nobody else: not this host's tasks, not the fabric\"\n\
         \t}}\n\
         }}\n",
        ip = agent.ip,
    )
}

/// netmod's vxlan device on every host (`netmod_core::routing::VXLAN_DEVICE`).
pub const VXLAN_DEVICE: &str = "vxlan.netmod";

/// Routed VXLAN: the machine routes the pool to agent 1, which hands its
/// packets into the overlay. A host accepts from the overlay only inner
/// sources of the sender's blocks and the sender's own address, so agent 1
/// gives the machine's packets its own address on the way in (the replies
/// come back to agent 1 through the router, and conntrack undoes it). The
/// machine is a client of the cluster here, as a browser outside a Calico
/// VXLAN cluster is: it reaches tasks in `public` (the collectors' pages).
pub fn overlay_gateway_rules(bridge_ip: Ipv4Addr, agent: &AgentHost) -> String {
    format!(
        "table inet {GUARD_TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname \"{VXLAN_DEVICE}\" ip saddr {bridge_ip} snat ip to {ip} \
         comment \"the machine into the overlay, as this host\"\n\
         \t}}\n\
         }}\n",
        ip = agent.ip,
    )
}

/// Installs [`control_port_rules`] in an agent host's namespace (before the
/// agent listens).
pub fn guard_control_port(cfg: &LabConfig, agent: &AgentHost) -> Result<(), LabError> {
    let mut rules = control_port_rules(cfg.bridge_ip, agent);
    let overlay = cfg
        .router
        .as_ref()
        .is_some_and(|r| r.routing == Routing::Vxlan);
    if overlay && cfg.pool_gateway() == Some(agent.ip) && cfg.pool.is_some() {
        rules.push_str(&overlay_gateway_rules(cfg.bridge_ip, agent));
    }
    let mut child = Command::new("ip")
        .args(["netns", "exec", &agent.name, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context(|| "cannot run ip netns exec ... nft (is nftables installed?)".into())?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .context(|| "cannot hand nft its rules".into())?;
    }
    let out = child
        .wait_with_output()
        .context(|| "cannot run nft".into())?;
    if !out.status.success() {
        return fail(format!(
            "cannot guard {}'s control port with nftables: {}",
            agent.name,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Routes the pool from the machine into the fabric, via agent 1 (or,
/// routed with BGP, via the router: see [`LabConfig::pool_gateway`]). Done
/// before any task starts, so traffic to pool addresses never falls through
/// to the machine's default route.
pub fn route_pool(cfg: &LabConfig) -> Result<(), LabError> {
    let (Some(pool), Some(gateway)) = (&cfg.pool, cfg.pool_gateway()) else {
        return Ok(());
    };
    ip(&[
        "route",
        "add",
        pool,
        "via",
        &gateway.to_string(),
        "dev",
        &cfg.bridge,
    ])?;
    Ok(())
}

/// What of the lab's exists in the kernel now.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Present {
    pub namespaces: Vec<String>,
    pub links: Vec<String>,
    pub routes: Vec<String>,
}

impl Present {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.links.is_empty() && self.routes.is_empty()
    }
}

/// Finds an instance's objects by name: its namespaces and its links in the
/// machine's namespace, and every route through one of those links (the
/// pool route among them).
pub fn present(lab: &Instance) -> Result<Present, LabError> {
    let mut p = Present::default();
    for ns in ip_json(&["-j", "netns", "list"])? {
        if let Some(name) = ns["name"].as_str() {
            if lab.owns_netns(name) {
                p.namespaces.push(name.to_string());
            }
        }
    }
    for l in ip_json(&["-j", "link", "show"])? {
        if let Some(name) = l["ifname"].as_str() {
            if lab.owns_link(name) {
                p.links.push(name.to_string());
            }
        }
    }
    for r in ip_json(&["-4", "-j", "route", "show", "table", "all"])? {
        let dev = r["dev"].as_str().unwrap_or("");
        if lab.owns_link(dev) {
            let dst = r["dst"].as_str().unwrap_or("");
            let table = r["table"].as_str().unwrap_or("main");
            p.routes.push(format!("{dst} dev {dev} table {table}"));
        }
    }
    Ok(p)
}

/// Removes an instance's kernel objects, best effort: every failure is
/// reported, "already gone" is not a failure.
pub fn destroy(lab: &Instance, pool: Option<&str>) -> Vec<String> {
    let mut errors = Vec::new();
    if let Some(pool) = pool {
        // Goes with the bridge too; removed first so no packet to the pool
        // can ever take the machine's default route meanwhile (there is none
        // left to take: the route is gone only once the bridge is).
        let _ = ip(&["route", "del", pool, "dev", &lab.bridge()]);
    }
    let found = match present(lab) {
        Ok(p) => p,
        Err(e) => {
            errors.push(e.to_string());
            return errors;
        }
    };
    for ns in &found.namespaces {
        if let Err(e) = ip(&["netns", "del", ns]) {
            errors.push(e.to_string());
        }
    }
    // Root-side veths go with their namespace side; the bridge last.
    let bridge = lab.bridge();
    let mut links = present(lab).map(|p| p.links).unwrap_or(found.links);
    links.sort_by_key(|l| *l == bridge);
    for link in links {
        if let Err(e) = ip(&["link", "del", &link]) {
            if !e.to_string().contains("Cannot find device") {
                errors.push(e.to_string());
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            shown: format!("{dst} dev eth9"),
        }
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let fabric: Ipv4Net = "10.234.0.0/24".parse().unwrap();
        let pool: Ipv4Net = "192.168.0.0/16".parse().unwrap();
        let routes = [route("192.0.2.0/24")];
        assert!(check_ranges(&routes, &fabric, Some(&pool)).is_ok());
        let e = check_ranges(&[route("192.168.7.0/24")], &fabric, Some(&pool)).unwrap_err();
        assert!(
            e.to_string()
                .contains("pool 192.168.0.0/16 overlaps the route `192.168.7.0/24 dev eth9`"),
            "{e}"
        );
        let e = check_ranges(&[route("10.0.0.0/8")], &fabric, None).unwrap_err();
        assert!(e.to_string().contains("--fabric"), "{e}");
        let e = check_ranges(&[], &fabric, Some(&"10.0.0.0/8".parse().unwrap())).unwrap_err();
        assert!(e.to_string().contains("overlaps the fabric"), "{e}");
    }

    #[test]
    fn only_the_master_reaches_an_agents_control_port() {
        let lab = Instance::default_instance();
        let (br, agents) = plan(&lab, &"10.234.0.0/24".parse().unwrap(), 2).unwrap();
        let rules = control_port_rules(br, &agents[1]);
        let lines: Vec<&str> = rules.lines().map(str::trim).collect();
        assert!(lines.contains(&"type filter hook input priority -10; policy accept;"));
        let accept = lines
            .iter()
            .position(|l| {
                l.starts_with(
                    "tcp dport 5051 iifname \"eth0\" ip saddr 10.234.0.1 ip daddr 10.234.0.12 accept",
                )
            })
            .expect(&rules);
        let reject = lines
            .iter()
            .position(|l| l.starts_with("tcp dport 5051 reject with tcp reset"))
            .expect(&rules);
        assert!(accept < reject, "{rules}");
        // Replaces an earlier copy rather than adding to it.
        assert!(rules.starts_with("add table inet netmod_lab\ndelete table inet netmod_lab\n"));
    }

    #[test]
    fn routed_plan_splits_the_fabric_behind_a_router() {
        let lab = Instance::default_instance();
        let fabric: Ipv4Net = "10.234.0.0/24".parse().unwrap();
        let (br, agents, r) = plan_routed(&lab, &fabric, 3, Routing::Vxlan).unwrap();
        assert_eq!(br.to_string(), "10.234.0.1");
        let ips: Vec<String> = agents.iter().map(|a| a.ip.to_string()).collect();
        assert_eq!(ips, ["10.234.0.11", "10.234.0.140", "10.234.0.13"]);
        assert_eq!(
            (r.subnet_a.as_str(), r.ip_a.to_string()),
            ("10.234.0.0/25", "10.234.0.2".into())
        );
        assert_eq!(
            (r.subnet_b.as_str(), r.ip_b.to_string()),
            ("10.234.0.128/25", "10.234.0.129".into())
        );
        assert_eq!(
            (r.ns.as_str(), r.veth.as_str()),
            ("nmlab-router", "nmlab-rtr")
        );
        assert_eq!(r.outside_ns, "nmlab-outside");
        assert!(r.on_b(agents[1].ip) && !r.on_b(agents[0].ip) && !r.on_b(agents[2].ip));
        assert_eq!(r.gateway_for(agents[1].ip), (r.ip_b, 25));
        assert_eq!(r.gateway_for(agents[0].ip), (r.ip_a, 25));
        // The etcd address stays on the bridge's subnet, clear of the router's.
        assert!(etcd_ip(&fabric) != r.ip_a && etcd_ip(&fabric) < agents[0].ip);
        let e = plan_routed(&lab, &"10.234.0.0/26".parse().unwrap(), 2, Routing::Vxlan)
            .unwrap_err()
            .to_string();
        assert!(e.contains("too small for --topology routed"), "{e}");
        assert!(plan_routed(&lab, &fabric, 0, Routing::Bgp).is_err());
    }

    #[test]
    fn fabric_plan() {
        let lab = Instance::default_instance();
        let (br, agents) = plan(&lab, &"10.234.0.0/24".parse().unwrap(), 2).unwrap();
        assert_eq!(br.to_string(), "10.234.0.1");
        assert_eq!(agents[1].ip.to_string(), "10.234.0.12");
        assert_eq!(agents[1].name, "nmlab-agent-2");
        assert_eq!(agents[0].root_veth, "nmlab-v1");
        assert!(plan(&lab, &"10.234.0.0/24".parse().unwrap(), 0).is_err());
        assert!(plan(&lab, &"10.234.0.0/28".parse().unwrap(), 1).is_err());
        let other = Instance::new("t1").unwrap();
        let (_, agents) = plan(&other, &"10.234.7.0/24".parse().unwrap(), 1).unwrap();
        assert_eq!(
            (agents[0].name.as_str(), agents[0].root_veth.as_str()),
            ("t1-agent-1", "t1-v1")
        );
    }
}
