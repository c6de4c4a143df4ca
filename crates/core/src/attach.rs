//! Plug a container into the network and unplug it: the work behind
//! `netmod mesos isolate/cleanup` and CNI ADD/DEL. Each step that succeeds is
//! undone if a later one fails, so a failed attach leaves nothing behind.

use crate::registry::{Registry, RegistryError};
use netmod_dataplane as dp;
use netmod_model::nft::{Change, Family};
use netmod_model::{container_mac, format_mac, host_iface_name, Endpoint, PUBLIC_NETGROUP};
use netmod_policy::{group_rule, group_set_name, BaseSets, CHAIN_NETGROUPS};
use netmod_store::Store;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct AttachRequest {
    pub host: String,
    pub container_id: String,
    pub container_iface: String,
    pub netns: PathBuf,
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
    pub netgroups: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub source: &'static str,
    /// The allocation handle holding the addresses, if the caller knows it.
    pub handle: Option<String>,
}

/// A failed step, in words a caller can act on.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {reason}")]
pub struct StepError {
    pub step: &'static str,
    pub reason: String,
}

fn step(step: &'static str) -> impl Fn(&dyn std::fmt::Display) -> StepError {
    move |e| StepError {
        step,
        reason: e.to_string(),
    }
}

pub fn attach(store: &dyn Store, req: &AttachRequest) -> Result<Endpoint, StepError> {
    let target = std::fs::metadata(&req.netns).map_err(|e| StepError {
        step: "opening the container's network namespace",
        reason: format!("{}: {e}", req.netns.display()),
    })?;
    // A task that has not left the host's namespace yet (or a wrong pid)
    // must never get the host's own namespace rewired.
    use std::os::unix::fs::MetadataExt;
    if let Ok(own) = std::fs::metadata("/proc/self/ns/net") {
        if (own.dev(), own.ino()) == (target.dev(), target.ino()) {
            return Err(StepError {
                step: "opening the container's network namespace",
                reason: format!(
                    "{} is this host's own network namespace, not a container's",
                    req.netns.display()
                ),
            });
        }
    }
    let mac = container_mac(&req.container_id, &req.container_iface);
    let ep = Endpoint {
        host: req.host.clone(),
        container_id: req.container_id.clone(),
        iface: host_iface_name(&req.container_id, &req.container_iface),
        container_iface: req.container_iface.clone(),
        mac: format_mac(&mac),
        ipv4: req.ipv4.clone(),
        ipv6: req.ipv6.clone(),
        netgroups: req.netgroups.clone(),
        labels: req.labels.clone(),
        netns: req.netns.display().to_string(),
        source: req.source.to_string(),
        handle: req.handle.clone(),
    };
    // Read before anything changes: a failure here leaves nothing behind.
    let mtu = veth_mtu(store)?;
    let registry = Registry::new(store);
    registry.create_endpoint(&ep).map_err(|e| match e {
        RegistryError::Store(e) => step("recording the endpoint")(&e),
        other => StepError {
            step: "recording the endpoint",
            reason: other.to_string(),
        },
    })?;
    // Policy before the link: the table and the endpoint's set elements are
    // in force before its first packet can exist, so a crash between the two
    // steps leaves a record without a link (the node collects it), never a
    // link without policy.
    if let Err(e) = add_local_policy(&registry, &ep) {
        let _ = remove_local_policy(&ep);
        let _ = registry.delete_endpoint(&ep);
        return Err(step("programming policy")(&e));
    }
    let plugged = dp::plug(&dp::PlugSpec {
        host_iface: ep.iface.clone(),
        container_iface: ep.container_iface.clone(),
        netns: req.netns.clone(),
        container_mac: mac,
        ipv4: ep.ipv4.clone(),
        ipv6: ep.ipv6.clone(),
        mtu,
    });
    if let Err(e) = plugged {
        let _ = remove_local_policy(&ep);
        let _ = registry.delete_endpoint(&ep);
        return Err(step("plugging the container in")(&e));
    }
    Ok(ep)
}

/// Delete an endpoint's record. When its allocation was released already
/// (its handle holds nothing, as after net-modules' `release`), the
/// addresses' quarantine starts again in the same transaction, so that it
/// counts from after every host has applied the removal. Returns whether it
/// did; the caller releases a handle that still holds the addresses.
pub fn forget_record(store: &dyn Store, ep: &Endpoint) -> Result<bool, crate::CoreError> {
    let ipam = netmod_ipam::Ipam::new(store);
    let ops = Registry::new(store).delete_endpoint_ops(ep)?;
    let released_before = match &ep.handle {
        Some(handle) => ipam.handle(handle)?.is_none(),
        None => true,
    };
    if released_before {
        let addrs: Vec<IpAddr> = ep.addrs().collect();
        ipam.restart_quarantine_with(&addrs, &ops)?;
    } else {
        store.txn(&[], &ops)?;
    }
    Ok(released_before)
}

/// Everything `detach` did not manage to undo (empty: all gone).
pub type Leftovers = Vec<String>;

/// Unplug a container's interface and forget it. Succeeds quietly when there
/// is nothing left to remove; best effort otherwise, reporting every error.
pub fn detach(
    store: &dyn Store,
    host: &str,
    container_id: &str,
    iface: &str,
) -> Result<Option<Endpoint>, Leftovers> {
    detach_then(store, host, container_id, iface, &|_, ops| {
        store.txn(&[], &ops).map(|_| ()).map_err(|e| e.to_string())
    })
}

/// Commits the operations that remove an endpoint's record (see `detach_then`).
pub type ForgetRecord<'a> = dyn Fn(&Endpoint, Vec<netmod_store::Op>) -> Result<(), String> + 'a;

/// `detach`, with the last step, the removal of the endpoint's record, left
/// to `forget`: it gets the endpoint and the store operations that remove
/// its record and commits them, together with whatever else must happen in
/// the same transaction (a door restarting the addresses' quarantine).
pub fn detach_then(
    store: &dyn Store,
    host: &str,
    container_id: &str,
    iface: &str,
    forget: &ForgetRecord<'_>,
) -> Result<Option<Endpoint>, Leftovers> {
    let registry = Registry::new(store);
    let mut errors = Vec::new();
    let ep = match registry.endpoint(host, container_id, iface) {
        Ok(ep) => ep,
        Err(e) => return Err(vec![format!("reading the endpoint record: {e}")]),
    };
    if let Some(ep) = &ep {
        if let Err(e) = remove_local_policy(ep) {
            errors.push(format!("removing policy entries: {e}"));
        }
    }
    let host_iface = ep
        .as_ref()
        .map(|e| e.iface.clone())
        .unwrap_or_else(|| host_iface_name(container_id, iface));
    if let Err(e) = dp::unplug(&host_iface) {
        errors.push(format!("deleting interface {host_iface}: {e}"));
    }
    // No flow of this endpoint may outlive it: its address can be handed out
    // again, and established flows are accepted before any profile. (Every
    // node does the same on its host when it sees the record go.)
    if let Some(ep) = &ep {
        let addrs: Vec<IpAddr> = ep.addrs().collect();
        if let Err(e) = dp::conntrack_forget(&addrs) {
            errors.push(format!("forgetting tracked flows: {e}"));
        }
    }
    if let Some(ep) = &ep {
        let forgotten = registry
            .delete_endpoint_ops(ep)
            .map_err(|e| e.to_string())
            .and_then(|ops| forget(ep, ops));
        if let Err(e) = forgotten {
            errors.push(format!("deleting the endpoint record: {e}"));
        }
    }
    if errors.is_empty() {
        Ok(ep)
    } else {
        Err(errors)
    }
}

fn family_addrs(ep: &Endpoint, f: Family) -> Vec<IpAddr> {
    ep.addrs().filter(|a| Family::of(a) == f).collect()
}

/// The sets one local endpoint's addresses belong in.
fn element_changes(ep: &Endpoint) -> Vec<(String, Family, Vec<IpAddr>)> {
    let mut out = Vec::new();
    for f in Family::BOTH {
        let addrs = family_addrs(ep, f);
        if addrs.is_empty() {
            continue;
        }
        if !ep.netgroups.is_empty() {
            out.push((BaseSets::grouped(f), f, addrs.clone()));
        }
        for g in &ep.netgroups {
            if g == PUBLIC_NETGROUP {
                out.push((BaseSets::public(f), f, addrs.clone()));
            } else {
                out.push((group_set_name(g, f), f, addrs.clone()));
            }
        }
    }
    out
}

/// The veth MTU: room for the VXLAN header when any pool may be
/// encapsulated (a 1500-byte uplink less 50), else the kernel's default.
fn veth_mtu(store: &dyn Store) -> Result<Option<u32>, StepError> {
    let pools = netmod_ipam::Ipam::new(store)
        .pools()
        .map_err(|e| step("reading pools")(&e))?;
    Ok(pools
        .iter()
        .any(|p| p.vxlan_mode != netmod_model::VxlanMode::Never)
        .then_some(1500 - crate::routing::VXLAN_OVERHEAD))
}

/// Open the new endpoint's profiles on this host: its addresses join the
/// sets, and a netgroup new to this host gets its set (with every member,
/// wherever it runs) and its rule.
fn add_local_policy(registry: &Registry, ep: &Endpoint) -> Result<(), String> {
    // The selectors only (not every policy's rules): the cost of an isolate
    // barely grows with the number of policies.
    let index = crate::policies::selector_index(registry.store).map_err(|e| e.to_string())?;
    if !dp::nft_table_exists().map_err(|e| e.to_string())? {
        // First endpoint since boot (or the node never ran): install the whole table.
        let policies = crate::policies::list(registry.store).map_err(|e| e.to_string())?;
        let endpoints = registry.endpoints().map_err(|e| e.to_string())?;
        let ruleset = netmod_policy::ruleset_with_policies(
            &ep.host,
            &endpoints,
            &policies,
            &crate::labels::endpoint_labels,
        );
        match dp::nft_replace_all(&ruleset) {
            // Then the increment below all the same: another first attach
            // may have replaced the table from a snapshot without us.
            Ok(()) => {}
            Err(_) if dp::nft_table_exists().unwrap_or(false) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    for attempt in 0..3 {
        let mut changes = Vec::new();
        for g in ep.netgroups.iter().filter(|g| *g != PUBLIC_NETGROUP) {
            // Every member, wherever it runs: a set that exists may have been
            // emptied when the group's last local member left.
            let members = registry.group_members(g).map_err(|e| e.to_string())?;
            for f in Family::BOTH {
                let set = group_set_name(g, f);
                let elements: Vec<IpAddr> = members
                    .iter()
                    .copied()
                    .chain(ep.addrs())
                    .filter(|a| Family::of(a) == f)
                    .collect();
                if !dp::nft_set_exists(&set).map_err(|e| e.to_string())? {
                    changes.push(Change::CreateSet(netmod_model::nft::SetDef {
                        name: set,
                        family: f,
                        elements: elements.into_iter().collect(),
                    }));
                    changes.push(Change::AppendRule {
                        chain: CHAIN_NETGROUPS.into(),
                        rule: group_rule(g, f),
                    });
                } else if !elements.is_empty() {
                    changes.push(Change::AddElements {
                        set,
                        family: f,
                        elements,
                    });
                }
            }
        }
        for (set, family, elements) in element_changes(ep) {
            changes.push(Change::AddElements {
                set,
                family,
                elements,
            });
        }
        // The policies that select it hold before its first packet too (the
        // node keeps these sets; it may not have seen this endpoint yet).
        for (set, family, elements) in policy_set_changes(ep, &index)? {
            changes.push(Change::AddElements {
                set,
                family,
                elements,
            });
        }
        match dp::nft_apply(&changes) {
            Ok(()) => return Ok(()),
            // A netgroup set created meanwhile, or a selector set the node
            // deleted with its policy: look again.
            Err(e) if (e.is_already_exists() || e.is_not_found()) && attempt < 2 => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("netgroup sets kept changing under us".into())
}

/// The policy sets (selector sets, `selected_*`) of this host's table that
/// the endpoint belongs in and that exist already (the node creates them).
fn policy_set_changes(
    ep: &Endpoint,
    index: &netmod_policy::SelectorIndex,
) -> Result<Vec<(String, Family, Vec<IpAddr>)>, String> {
    let labels = crate::labels::endpoint_labels(ep);
    let mut out = Vec::new();
    for (set, family, elements) in index.endpoint_sets(ep, &labels) {
        if dp::nft_set_exists(&set).map_err(|e| e.to_string())? {
            out.push((set, family, elements));
        }
    }
    Ok(out)
}

fn remove_local_policy(ep: &Endpoint) -> Result<(), String> {
    if !dp::nft_table_exists().map_err(|e| e.to_string())? {
        return Ok(());
    }
    let mut changes = Vec::new();
    for (set, family, elements) in element_changes(ep) {
        if dp::nft_set_exists(&set).map_err(|e| e.to_string())? {
            changes.push(Change::DeleteElements {
                set,
                family,
                elements,
            });
        }
    }
    dp::nft_apply(&changes).map_err(|e| e.to_string())
}

/// What differs between an endpoint's record and the kernel (empty: nothing).
pub fn verify(ep: &Endpoint) -> Vec<String> {
    let mut problems = Vec::new();
    match dp::link_exists(&ep.iface) {
        Ok(true) => {}
        Ok(false) => problems.push(format!("host interface {} is missing", ep.iface)),
        Err(e) => problems.push(format!("cannot read links: {e}")),
    }
    match dp::list_routes() {
        Ok(routes) => {
            for a in ep.addrs() {
                let ok = routes.iter().any(|r| {
                    r.dst == ipnet::IpNet::from(a) && r.dev.as_deref() == Some(ep.iface.as_str())
                });
                if !ok {
                    problems.push(format!("host route {a} dev {} is missing", ep.iface));
                }
            }
        }
        Err(e) => problems.push(format!("cannot read routes: {e}")),
    }
    for (set, family, addrs) in element_changes(ep) {
        match dp::nft_list_set_elements(&set, family) {
            Ok(have) => {
                for a in addrs.iter().filter(|a| !have.contains(a)) {
                    problems.push(format!("{a} is missing from set {set}"));
                }
            }
            Err(e) => problems.push(format!("set {set}: {e}")),
        }
    }
    // Inside the container: the interface, its addresses, its default route.
    let ifname = ep.container_iface.clone();
    let inside = dp::in_netns(std::path::Path::new(&ep.netns), move || {
        let link = dp::link_exists(&ifname);
        let routes = dp::list_routes();
        (link, routes)
    });
    match inside {
        Err(e) => problems.push(format!("cannot enter {}: {e}", ep.netns)),
        Ok((link, routes)) => {
            if !matches!(link, Ok(true)) {
                problems.push(format!(
                    "{} is missing in the container",
                    ep.container_iface
                ));
            }
            let has_default = |v4: bool| {
                routes.as_ref().is_ok_and(|rs| {
                    rs.iter()
                        .any(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_ipv4() == v4)
                })
            };
            if !ep.ipv4.is_empty() && !has_default(true) {
                problems.push("the container has no IPv4 default route".into());
            }
            if !ep.ipv6.is_empty() && !has_default(false) {
                problems.push("the container has no IPv6 default route".into());
            }
        }
    }
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ep.netns))
        .args(["ip", "-j", "addr", "show", "dev", &ep.container_iface])
        .output();
    if let Some(out) = out.ok().filter(|o| o.status.success()) {
        let text = String::from_utf8_lossy(&out.stdout);
        for a in ep.addrs() {
            if !text.contains(&format!("\"local\":\"{a}\"")) {
                problems.push(format!(
                    "{a} is not on {} in the container",
                    ep.container_iface
                ));
            }
        }
    }
    problems
}
