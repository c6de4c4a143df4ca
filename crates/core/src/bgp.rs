//! Routing between hosts through BGP, spoken by BIRD 2 (Debian's `bird2`):
//! netmod writes BIRD's configuration and has BIRD re-read it on change;
//! it speaks no routing protocol of its own.
//!
//! - [`render`] (pure): `bird.conf` for one host: a static blackhole per
//!   local block, announced to every peer; routes learned by BGP exported
//!   into the kernel (protocol `bird`, never netmod's 110, and never a
//!   prefix the node routes itself); one BGP session per peer.
//! - Peers: `bgp/peers/<address>` in the datastore ([`add_peer`],
//!   [`list_peers`], [`remove_peer`]). With none, every host peers with
//!   every other live host (a full mesh, in the AS of `--bgp-as`).
//! - [`Supervisor`]: writes the file atomically (checked by `bird -p`
//!   first), starts `bird -f` as the node's child (it dies with the node,
//!   and is restarted if it exits) unless BIRD is run by systemd
//!   (`--bird-external`), and runs `birdc configure` when the text changed.

use crate::CoreError;
use ipnet::IpNet;
use netmod_model::Host;
use netmod_store::{Compare, Op, Store};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where peers are stored: `bgp/peers/<address>`.
pub const PEERS: &str = "bgp/peers/";
/// The hosts' AS when `--bgp-as` says nothing (the first private 16-bit AS).
pub const DEFAULT_AS: u32 = 64512;
pub const DEFAULT_CONFIG: &str = "/run/netmod/bird.conf";
pub const DEFAULT_SOCKET: &str = "/run/netmod/bird.ctl";
pub const BIRD: &str = "bird";
pub const BIRDC: &str = "birdc";

/// BIRD's protocol names in the rendered file.
const STATIC4: &str = "netmod_blocks4";
const STATIC6: &str = "netmod_blocks6";

/// A BGP peer: a route reflector, a top-of-rack router, another host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Peer {
    pub address: IpAddr,
    #[serde(rename = "as")]
    pub asn: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

pub fn peer_key(address: &IpAddr) -> String {
    format!("{PEERS}{address}")
}

/// A 4-byte AS number BGP can use: not 0, not AS_TRANS (23456), not the
/// reserved last one.
pub fn check_asn(asn: u32) -> Result<(), CoreError> {
    match asn {
        0 | 23456 | u32::MAX => Err(CoreError::Other(format!(
            "AS {asn} is reserved; use 1-4294967294 except 23456 (private: 64512-65534, 4200000000-4294967294)"
        ))),
        _ => Ok(()),
    }
}

pub fn check_peer(p: &Peer) -> Result<(), CoreError> {
    check_asn(p.asn)?;
    let a = p.address;
    if a.is_unspecified() || a.is_loopback() || a.is_multicast() {
        return Err(CoreError::Other(format!(
            "{a} cannot be a BGP peer (unspecified, loopback or multicast)"
        )));
    }
    if let IpAddr::V4(v4) = a {
        if v4.is_broadcast() {
            return Err(CoreError::Other(format!("{a} cannot be a BGP peer")));
        }
    }
    if let Some(d) = &p.description {
        if d.len() > 200 || d.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
            return Err(CoreError::Other(
                "a peer's description is at most 200 characters, without quotes, backslashes or control characters".into(),
            ));
        }
    }
    Ok(())
}

/// Store a peer (validated first; nothing is stored on bad input).
/// Ok(true) when it is new, Ok(false) when it replaced one.
pub fn add_peer(store: &dyn Store, peer: &Peer) -> Result<bool, CoreError> {
    check_peer(peer)?;
    let key = peer_key(&peer.address);
    let value = serde_json::to_vec(peer).expect("a peer serialises");
    for _ in 0..5 {
        let (compare, created) = match store.get(&key)? {
            None => (Compare::absent(&key), true),
            Some(kv) => (Compare::unchanged(&kv), false),
        };
        if store
            .txn(&[compare], &[Op::put(&key, value.clone())])?
            .succeeded
        {
            return Ok(created);
        }
    }
    Err(CoreError::Other(
        "the peer kept changing under us; try again".into(),
    ))
}

/// Every stored peer, by address. Unreadable records are reported and skipped.
pub fn list_peers(store: &dyn Store) -> Result<Vec<Peer>, CoreError> {
    let (kvs, _) = store.range(PEERS)?;
    let mut out = Vec::new();
    for kv in kvs {
        match serde_json::from_slice::<Peer>(&kv.value) {
            Ok(p) => out.push(p),
            Err(e) => eprintln!(
                "netmod: skipping the unreadable peer record {}: {e}",
                kv.key
            ),
        }
    }
    out.sort();
    Ok(out)
}

/// Ok(false) when there was no such peer.
pub fn remove_peer(store: &dyn Store, address: &IpAddr) -> Result<bool, CoreError> {
    let key = peer_key(address);
    let Some(kv) = store.get(&key)? else {
        return Ok(false);
    };
    Ok(store
        .txn(&[Compare::unchanged(&kv)], &[Op::delete(&key)])?
        .succeeded)
}

/// Whom this host peers with: the configured peers when there are any
/// (minus this host's own addresses), else every other live host, in our
/// AS, over each family both have an address of.
pub fn sessions(
    configured: &[Peer],
    hosts: &BTreeMap<String, Host>,
    me: &Host,
    local_as: u32,
) -> Vec<Peer> {
    let mine = [Some(me.ip), me.ipv6];
    if !configured.is_empty() {
        return configured
            .iter()
            .filter(|p| !mine.contains(&Some(p.address)))
            .cloned()
            .collect();
    }
    let mut out = Vec::new();
    for (name, h) in hosts {
        if name == &me.name {
            continue;
        }
        let peer = |address| Peer {
            address,
            asn: local_as,
            description: Some(format!("netmod host {name}")),
        };
        if me.ip.is_ipv4() && h.ip.is_ipv4() {
            out.push(peer(h.ip));
        }
        let my6 = me.ipv6.or(Some(me.ip).filter(IpAddr::is_ipv6));
        let their6 = h.ipv6.or(Some(h.ip).filter(IpAddr::is_ipv6));
        if let (Some(_), Some(a)) = (my6, their6) {
            out.push(peer(a));
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.address == b.address);
    out
}

/// Everything one host's `bird.conf` depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// BGP router id: the host's IPv4 address.
    pub router_id: Ipv4Addr,
    pub local_as: u32,
    /// This host's blocks: announced (as blackholes) to every peer.
    pub blocks: Vec<IpNet>,
    /// Prefixes the node routes itself (VXLAN, strays): BIRD never puts a
    /// route of its own for them into the kernel.
    pub node_routed: Vec<IpNet>,
    pub peers: Vec<Peer>,
}

/// The router id for a host: its IPv4 address, else the last 32 bits of
/// its IPv6 one.
pub fn router_id(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => {
            let o = a.octets();
            Ipv4Addr::new(o[12], o[13], o[14], o[15])
        }
    }
}

/// A BIRD symbol for a peer's session: `peer_10_0_0_1`, `peer_fd00x1xx2`.
fn session_name(address: &IpAddr) -> String {
    let text: String = address
        .to_string()
        .chars()
        .map(|c| match c {
            '.' => '_',
            ':' => 'x',
            c => c,
        })
        .collect();
    format!("peer_{text}")
}

fn prefix_set(nets: &[IpNet], v4: bool) -> Option<String> {
    let list: Vec<String> = nets
        .iter()
        .filter(|n| matches!(n, IpNet::V4(_)) == v4)
        .map(|n| n.trunc().to_string())
        .collect();
    (!list.is_empty()).then(|| format!("[ {} ]", list.join(", ")))
}

/// The whole `bird.conf` (deterministic: same input, same text).
pub fn render(d: &Desired) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# Written by netmod node; rewritten on every change. Do not edit.\n\
         log stderr all;\n\
         router id {};\n",
        d.router_id
    );
    o.push_str(
        "# Interfaces, and the connected networks (only to resolve BGP next hops;\n\
         # exported nowhere).\n\
         protocol device { scan time 10; }\n\
         protocol direct netmod_direct {\n  ipv4;\n  ipv6;\n  interface \"-nmv*\", \"-vxlan.netmod\", \"*\";\n}\n\n",
    );
    o.push_str(
        "# Only routes learned by BGP go into the kernel (protocol \"bird\"); netmod's\n\
         # own routes (protocol 110) are never learned, so never touched, and the\n\
         # prefixes the node routes itself are left to it.\n",
    );
    for (v4, fam) in [(true, "ipv4"), (false, "ipv6")] {
        let filter = match prefix_set(&d.node_routed, v4) {
            Some(set) => format!("source = RTS_BGP && net !~ {set}"),
            None => "source = RTS_BGP".to_string(),
        };
        let _ = writeln!(
            o,
            "protocol kernel netmod_kernel{n} {{\n  {fam} {{ import none; export where {filter}; }};\n  learn off;\n  merge paths on;\n}}",
            n = if v4 { 4 } else { 6 }
        );
    }
    o.push_str("\n# This host's blocks: what it announces (the node installs the kernel's\n# blackholes itself).\n");
    for (v4, fam, name) in [(true, "ipv4", STATIC4), (false, "ipv6", STATIC6)] {
        let _ = writeln!(o, "protocol static {name} {{\n  {fam};");
        let mut blocks: Vec<IpNet> = d
            .blocks
            .iter()
            .filter(|b| matches!(b, IpNet::V4(_)) == v4)
            .map(IpNet::trunc)
            .collect();
        blocks.sort();
        blocks.dedup();
        for b in blocks {
            let _ = writeln!(o, "  route {b} blackhole;");
        }
        o.push_str("}\n");
    }
    let mut peers = d.peers.clone();
    peers.sort();
    peers.dedup_by(|a, b| a.address == b.address);
    for p in &peers {
        let (fam, stat) = match p.address {
            IpAddr::V4(_) => ("ipv4", STATIC4),
            IpAddr::V6(_) => ("ipv6", STATIC6),
        };
        let _ = writeln!(o, "\nprotocol bgp {} {{", session_name(&p.address));
        if let Some(desc) = &p.description {
            let _ = writeln!(o, "  description \"{desc}\";");
        }
        let _ = writeln!(
            o,
            "  local as {};\n  neighbor {} as {};",
            d.local_as, p.address, p.asn
        );
        // Fast convergence: a dead peer's routes go within 3 s, and BIRD
        // keeps no stale routes of a peer that went away (no graceful
        // restart).
        o.push_str(
            "  hold time 3;\n  keepalive time 1;\n  connect retry time 1;\n  error wait time 1, 10;\n  graceful restart off;\n",
        );
        if p.asn != d.local_as {
            // Behind a top-of-rack router in another AS, the other hosts'
            // routes carry our own AS in their path.
            o.push_str("  allow local as;\n");
        }
        let _ = writeln!(
            o,
            "  {fam} {{\n    import all;\n    export where proto = \"{stat}\";\n    next hop self;\n  }};\n}}"
        );
    }
    o
}

/// How the node runs BGP (`netmod node --bgp …`).
#[derive(Debug, Clone)]
pub struct BgpSettings {
    pub local_as: u32,
    pub config: PathBuf,
    pub socket: PathBuf,
    /// BIRD is started by systemd (or anyone else), not by the node.
    pub external: bool,
}

impl Default for BgpSettings {
    fn default() -> Self {
        BgpSettings {
            local_as: DEFAULT_AS,
            config: DEFAULT_CONFIG.into(),
            socket: DEFAULT_SOCKET.into(),
            external: false,
        }
    }
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("netmod node: bgp: {msg}");
}

/// Keeps BIRD's configuration what the node wants, and BIRD running.
pub struct Supervisor {
    settings: BgpSettings,
    /// The text BIRD runs with (None: not yet, or the last reload failed).
    loaded: Option<String>,
    /// The pid of BIRD while the node's child runs.
    child: Option<Arc<Mutex<Option<u32>>>>,
}

impl Supervisor {
    pub fn new(settings: BgpSettings) -> Supervisor {
        Supervisor {
            settings,
            loaded: None,
            child: None,
        }
    }

    pub fn settings(&self) -> &BgpSettings {
        &self.settings
    }

    /// Make BIRD run with `text`: write it (when it changed) and reload.
    /// Ok(true) when BIRD was given a new configuration.
    pub fn sync(&mut self, text: &str) -> Result<bool, CoreError> {
        if self.loaded.as_deref() == Some(text) {
            return Ok(false);
        }
        write_checked(&self.settings.config, text)?;
        if !self.settings.external && self.child.is_none() {
            self.child = Some(spawn_bird(&self.settings)?);
            // BIRD reads the file as it starts.
            self.loaded = Some(text.to_string());
            log(format!(
                "BIRD started with {}",
                self.settings.config.display()
            ));
            return Ok(true);
        }
        match configure(&self.settings.socket) {
            Ok(()) => {
                self.loaded = Some(text.to_string());
                Ok(true)
            }
            // Our BIRD starting (its socket not there yet): try again at
            // the next sync.
            Err(Reload::NotRunning(_)) if self.child_up() => Ok(false),
            // A BIRD that is not running (ours between two runs, or
            // systemd's not started yet) reads the file as it starts.
            Err(Reload::NotRunning(e)) => {
                log(format!(
                    "BIRD is not running ({e}); it reads {} as it starts",
                    self.settings.config.display()
                ));
                self.loaded = Some(text.to_string());
                Ok(true)
            }
            Err(Reload::Failed(e)) => Err(e),
        }
    }

    fn child_up(&self) -> bool {
        self.child
            .as_ref()
            .is_some_and(|c| c.lock().unwrap_or_else(|e| e.into_inner()).is_some())
    }
}

/// Write `text` to `path` atomically (a temporary file renamed over it),
/// once `bird -p` has parsed it.
fn write_checked(path: &Path, text: &str) -> Result<(), CoreError> {
    let err = |what: &str, e: &dyn std::fmt::Display| {
        CoreError::Other(format!("{what} {}: {e}", path.display()))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err("creating the directory of", &e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(|e| err("writing", &e))?;
    let parsed = Command::new(BIRD).arg("-p").arg("-c").arg(&tmp).output();
    match parsed {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(CoreError::Other(format!(
                "BIRD refuses the configuration netmod wrote (a bug): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(CoreError::Other(format!(
                "cannot run `{BIRD} -p`: {e} (install BIRD 2: Debian's bird2)"
            )));
        }
    }
    std::fs::rename(&tmp, path).map_err(|e| err("replacing", &e))
}

/// Why `birdc configure` did not take.
pub enum Reload {
    /// Nothing answers on the control socket.
    NotRunning(String),
    /// BIRD answered and refused, or birdc could not run.
    Failed(CoreError),
}

/// `birdc -s SOCKET configure`: BIRD re-reads its file.
pub fn configure(socket: &Path) -> Result<(), Reload> {
    let (ok, text) = birdc(socket, "configure").map_err(Reload::Failed)?;
    if ok && text.contains("Reconfigur") {
        return Ok(());
    }
    if text.contains("Unable to connect to server control socket") {
        return Err(Reload::NotRunning(text.trim().to_string()));
    }
    Err(Reload::Failed(CoreError::Other(format!(
        "birdc -s {} configure: {}",
        socket.display(),
        text.trim()
    ))))
}

/// Run one birdc command: (exit status success, stdout and stderr).
fn birdc(socket: &Path, command: &str) -> Result<(bool, String), CoreError> {
    let out = Command::new(BIRDC)
        .arg("-s")
        .arg(socket)
        .arg(command)
        .output()
        .map_err(|e| {
            CoreError::Other(format!(
                "cannot run `{BIRDC}`: {e} (install BIRD 2: Debian's bird2)"
            ))
        })?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// Start `bird -f` under a thread that lives as long as the node: BIRD
/// gets SIGTERM when the node dies (PR_SET_PDEATHSIG; on SIGTERM BIRD
/// shuts down cleanly, removing its kernel routes), and is started again
/// a second after it exits.
fn spawn_bird(settings: &BgpSettings) -> Result<Arc<Mutex<Option<u32>>>, CoreError> {
    let pid = Arc::new(Mutex::new(None));
    let (config, socket) = (settings.config.clone(), settings.socket.clone());
    let shared = pid.clone();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("bird".into())
        .spawn(move || {
            let mut first = Some(started_tx);
            loop {
                use std::os::unix::process::CommandExt;
                let parent = std::process::id() as libc::pid_t;
                let mut cmd = Command::new(BIRD);
                cmd.arg("-f")
                    .arg("-c")
                    .arg(&config)
                    .arg("-s")
                    .arg(&socket)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null());
                // SAFETY: only async-signal-safe calls between fork and exec.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        // The node died before the line above: go too.
                        if libc::getppid() != parent {
                            libc::_exit(0);
                        }
                        Ok(())
                    });
                }
                match cmd.spawn() {
                    Ok(mut child) => {
                        *shared.lock().unwrap_or_else(|e| e.into_inner()) = Some(child.id());
                        if let Some(tx) = first.take() {
                            let _ = tx.send(Ok(()));
                        }
                        let status = child.wait();
                        *shared.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        log(format!(
                            "BIRD exited ({}); starting it again in 1 s",
                            status
                                .map(|s| s.to_string())
                                .unwrap_or_else(|e| e.to_string())
                        ));
                    }
                    Err(e) => {
                        if let Some(tx) = first.take() {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                        log(format!("cannot start {BIRD}: {e}; retrying in 1 s"));
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
        .map_err(|e| CoreError::Other(format!("starting BIRD's supervisor: {e}")))?;
    match started_rx.recv() {
        Ok(Ok(())) => Ok(pid),
        Ok(Err(e)) => Err(CoreError::Other(format!(
            "cannot start {BIRD}: {e} (install BIRD 2: Debian's bird2)"
        ))),
        Err(_) => Err(CoreError::Other("BIRD's supervisor ended".into())),
    }
}

/// What [`uninstall`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Uninstalled {
    pub config: bool,
    pub bird_stopped: bool,
}

/// Remove the node's BIRD configuration, and stop a BIRD that still
/// answers on the node's socket (`birdc down`: it withdraws its routes
/// and removes its kernel routes) unless BIRD is systemd's.
pub fn uninstall(settings: &BgpSettings) -> Result<Uninstalled, CoreError> {
    let mut gone = Uninstalled::default();
    if !settings.external && settings.socket.exists() {
        let (ok, text) = birdc(&settings.socket, "down")?;
        if ok && text.contains("Shutdown") {
            // BIRD removes its socket as it ends.
            for _ in 0..100 {
                if !settings.socket.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            gone.bird_stopped = true;
        }
    }
    match std::fs::remove_file(&settings.config) {
        Ok(()) => gone.config = true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(CoreError::Other(format!(
                "removing {}: {e}",
                settings.config.display()
            )))
        }
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn host(name: &str, ip4: &str, ip6: Option<&str>) -> Host {
        Host {
            name: name.into(),
            ip: ip(ip4),
            ipv6: ip6.map(ip),
            applied_revision: None,
            subnet: None,
            vtep: None,
        }
    }

    fn desired() -> Desired {
        Desired {
            router_id: "10.0.1.1".parse().unwrap(),
            local_as: 64512,
            blocks: vec![net("10.161.0.64/26"), net("fd00:161::/122")],
            node_routed: vec![],
            peers: vec![
                Peer {
                    address: ip("10.0.1.2"),
                    asn: 64512,
                    description: Some("netmod host h2".into()),
                },
                Peer {
                    address: ip("fd00:ff::2"),
                    asn: 64513,
                    description: None,
                },
            ],
        }
    }

    #[test]
    fn renders_router_id_statics_kernel_export_and_one_session_per_peer() {
        let text = render(&desired());
        assert!(text.contains("router id 10.0.1.1;"), "{text}");
        assert!(
            text.contains(
                "protocol static netmod_blocks4 {\n  ipv4;\n  route 10.161.0.64/26 blackhole;\n}"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "protocol static netmod_blocks6 {\n  ipv6;\n  route fd00:161::/122 blackhole;\n}"
            ),
            "{text}"
        );
        assert!(
            text.contains("ipv4 { import none; export where source = RTS_BGP; };"),
            "{text}"
        );
        assert!(
            text.contains("ipv6 { import none; export where source = RTS_BGP; };"),
            "{text}"
        );
        assert!(text.contains("learn off;"));
        assert_eq!(text.matches("protocol bgp ").count(), 2, "{text}");
        assert!(text.contains("protocol bgp peer_10_0_1_2 {\n  description \"netmod host h2\";\n  local as 64512;\n  neighbor 10.0.1.2 as 64512;"), "{text}");
        assert!(text.contains("protocol bgp peer_fd00xffxx2 {\n  local as 64512;\n  neighbor fd00:ff::2 as 64513;"), "{text}");
        assert!(text.contains("hold time 3;") && text.contains("graceful restart off;"));
        // An IPv4 session carries IPv4 and exports only the IPv4 blocks.
        let v4 = &text[text.find("protocol bgp peer_10_0_1_2").unwrap()..];
        let v4 = &v4[..v4.find("\n}").unwrap()];
        assert!(
            v4.contains("ipv4 {\n    import all;\n    export where proto = \"netmod_blocks4\";"),
            "{v4}"
        );
        assert!(
            !v4.contains("ipv6") && !v4.contains("allow local as"),
            "{v4}"
        );
        // eBGP (another AS): other hosts' routes may carry our AS.
        let v6 = &text[text.find("protocol bgp peer_fd00").unwrap()..];
        assert!(
            v6.contains("allow local as;")
                && v6.contains("export where proto = \"netmod_blocks6\";"),
            "{v6}"
        );
    }

    #[test]
    fn the_node_s_own_prefixes_are_never_exported_to_the_kernel() {
        let mut d = desired();
        d.node_routed = vec![
            net("10.161.1.0/26"),
            net("fd00:161::40/122"),
            net("10.161.2.0/26"),
        ];
        let text = render(&d);
        assert!(
            text.contains(
                "export where source = RTS_BGP && net !~ [ 10.161.1.0/26, 10.161.2.0/26 ];"
            ),
            "{text}"
        );
        assert!(
            text.contains("export where source = RTS_BGP && net !~ [ fd00:161::40/122 ];"),
            "{text}"
        );
    }

    #[test]
    fn no_blocks_and_no_peers_still_make_a_valid_skeleton_and_rendering_is_stable() {
        let d = Desired {
            blocks: vec![],
            peers: vec![],
            ..desired()
        };
        let text = render(&d);
        assert!(
            text.contains("protocol static netmod_blocks4 {\n  ipv4;\n}"),
            "{text}"
        );
        assert!(!text.contains("protocol bgp"));
        let mut shuffled = desired();
        shuffled.peers.reverse();
        shuffled.blocks.reverse();
        assert_eq!(render(&shuffled), render(&desired()));
    }

    /// BIRD itself accepts the rendered file (when it is installed).
    #[test]
    fn bird_parses_the_rendered_file() {
        if Command::new(BIRD).arg("--version").output().is_err() {
            eprintln!("bird not installed: skipping the parse check");
            return;
        }
        let dir = std::env::temp_dir().join(format!("netmod-bgp-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bird.conf");
        let mut d = desired();
        d.node_routed = vec![net("10.161.1.0/26")];
        write_checked(&path, &render(&d)).unwrap();
        assert!(path.exists());
        // A broken file is refused and the good one stays.
        let err = write_checked(&path, "protocol nonsense {").unwrap_err();
        assert!(err.to_string().contains("refuses"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), render(&d));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn full_mesh_without_configured_peers_else_only_those() {
        let hosts: BTreeMap<String, Host> = [
            host("h1", "10.0.1.1", Some("fd00:ff::1")),
            host("h2", "10.0.1.2", Some("fd00:ff::2")),
            host("h3", "10.0.2.3", None),
        ]
        .into_iter()
        .map(|h| (h.name.clone(), h))
        .collect();
        let me = &hosts["h1"];
        let mesh = sessions(&[], &hosts, me, 64512);
        let addrs: Vec<IpAddr> = mesh.iter().map(|p| p.address).collect();
        assert_eq!(addrs, [ip("10.0.1.2"), ip("10.0.2.3"), ip("fd00:ff::2")]);
        assert!(mesh.iter().all(|p| p.asn == 64512));
        let rr = Peer {
            address: ip("10.0.9.9"),
            asn: 64513,
            description: None,
        };
        let own = Peer {
            address: ip("10.0.1.1"),
            asn: 64512,
            description: None,
        };
        assert_eq!(sessions(&[rr.clone(), own], &hosts, me, 64512), vec![rr]);
    }

    #[test]
    fn bad_peers_are_refused() {
        for (addr, asn, desc) in [
            ("10.0.0.1", 0, None),
            ("10.0.0.1", 23456, None),
            ("127.0.0.1", 64512, None),
            ("0.0.0.0", 64512, None),
            ("224.0.0.1", 64512, None),
            ("10.0.0.1", 64512, Some("a \"quoted\" name")),
        ] {
            let p = Peer {
                address: ip(addr),
                asn,
                description: desc.map(String::from),
            };
            assert!(check_peer(&p).is_err(), "{p:?}");
        }
        assert!(check_peer(&Peer {
            address: ip("10.0.0.1"),
            asn: 4_200_000_000,
            description: Some("tor-1".into())
        })
        .is_ok());
    }
}
