//! `netmod ipam check`: what is out of step between the allocations, the
//! endpoint records and this host's interfaces, and (with `repair`) putting
//! it right. What Calico's `calicoctl ipam check` reports, for netmod:
//!
//! - an allocation (handle) that no endpoint record uses, once it is older
//!   than a grace period (a task between `allocate` and `isolate` has none
//!   yet): its addresses leaked. Repair releases it.
//! - an endpoint record of this host whose interface is gone. Repair deletes
//!   the record with its address and netgroup index keys, and releases its
//!   handle.
//! - an interface with netmod's name shape that no record names. Repair
//!   removes it.
//! - blocks and handles that disagree, and records this version cannot
//!   read: reported, never repaired here.
//!
//! Interfaces are listed before records are read (an attach records before
//! it plugs, so a listed interface whose record is missing is not an attach
//! in progress), and every repair checks again, after a pause, that what it
//! is about to change is still as it was found.

use crate::registry::ENDPOINTS;
use crate::CoreError;
use netmod_dataplane as dp;
use netmod_ipam::{HandleRecord, Ipam, IpamError};
use netmod_model::{is_host_iface_name, Endpoint, HOST_IFACE_PREFIX};
use netmod_store::{decode_all, Store, Undecodable};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

/// What `check` looks at and whether it repairs.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// This host's name: its endpoint records are checked against the
    /// interfaces of the namespace the caller runs in.
    pub hostname: String,
    /// How old an allocation with no endpoint must be to count as leaked.
    pub grace: Duration,
    pub repair: bool,
    /// The pause before a repair checks again that nothing changed.
    pub settle: Duration,
}

impl CheckOptions {
    pub fn new(hostname: impl Into<String>) -> Self {
        CheckOptions {
            hostname: hostname.into(),
            grace: DEFAULT_GRACE,
            repair: false,
            settle: Duration::from_secs(2),
        }
    }
}

/// How long an allocation may go without an endpoint before it is leaked.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// A handle no endpoint record uses, older than the grace period.
    LeakedAllocation,
    /// A record of this host whose interface does not exist.
    RecordWithoutLink,
    /// An interface of netmod's that no record names.
    LinkWithoutRecord,
    /// An interface here that a record of another host names: this host is
    /// checked under the wrong name.
    LinkOfAnotherHost,
    /// Blocks and handles disagree.
    IpamInconsistent,
    /// A record this version cannot read.
    Unreadable,
}

impl ProblemKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ProblemKind::LeakedAllocation => "leaked-allocation",
            ProblemKind::RecordWithoutLink => "record-without-link",
            ProblemKind::LinkWithoutRecord => "link-without-record",
            ProblemKind::LinkOfAnotherHost => "link-of-another-host",
            ProblemKind::IpamInconsistent => "ipam-inconsistent",
            ProblemKind::Unreadable => "unreadable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// What it is about: a handle, an endpoint record's key, an interface.
    pub subject: String,
    pub detail: String,
    /// What the repair did ("released", "record deleted", ...), or why it
    /// did nothing; `None` without `repair`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Whether the repair put it right.
    pub repaired: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub hostname: String,
    /// Allocations (handles) checked.
    pub allocations: usize,
    /// Endpoint records checked, on every host.
    pub endpoints: usize,
    /// Of those, this host's.
    pub local_endpoints: usize,
    /// netmod interfaces in this namespace.
    pub links: usize,
    pub repair: bool,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn clean(&self) -> bool {
        self.problems.is_empty()
    }
}

fn problem(kind: ProblemKind, subject: impl Into<String>, detail: impl Into<String>) -> Problem {
    Problem {
        kind,
        subject: subject.into(),
        detail: detail.into(),
        action: None,
        repaired: false,
    }
}

fn addrs(list: &[IpAddr]) -> String {
    if list.is_empty() {
        return "nothing".into();
    }
    list.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// An endpoint record as read: its key, its mod revision and the endpoint.
struct Record {
    key: String,
    rev: i64,
    ep: Endpoint,
}

/// The endpoint records, and those that cannot be read.
fn read_endpoints(store: &dyn Store) -> Result<(Vec<Record>, Vec<Undecodable>), CoreError> {
    let (kvs, _) = store.range(ENDPOINTS)?;
    let (good, bad) = decode_all::<Endpoint>(&kvs);
    let records = good
        .into_iter()
        .map(|(kv, ep)| Record {
            key: kv.key.clone(),
            rev: kv.mod_revision,
            ep,
        })
        .collect();
    Ok((records, bad))
}

/// Whether an endpoint uses a handle: it names it, or holds one of its addresses.
fn uses(ep: &Endpoint, h: &HandleRecord) -> bool {
    ep.handle.as_deref() == Some(h.handle.as_str()) || ep.addrs().any(|a| h.addrs.contains(&a))
}

/// Look; with `opts.repair`, put right what can be. An error means the
/// check itself could not run (the datastore, the kernel); a failed repair
/// is reported in its problem's `action`.
pub fn check(store: &dyn Store, opts: &CheckOptions) -> Result<Report, CoreError> {
    // Links first: a record created after this listing is an attach in
    // progress, and its link is not in the list, so it is never called an orphan.
    let links: BTreeSet<String> = dp::list_links_with_prefix(HOST_IFACE_PREFIX)?
        .into_iter()
        .map(|l| l.name)
        .filter(|n| is_host_iface_name(n))
        .collect();
    let (endpoints, bad_endpoints) = read_endpoints(store)?;
    let ipam = Ipam::new(store);
    let (handles, bad_handles) = ipam.handles_checked()?;
    let mut problems = Vec::new();
    for bad in bad_endpoints.iter().chain(&bad_handles) {
        problems.push(problem(
            ProblemKind::Unreadable,
            &bad.key,
            bad.error.clone(),
        ));
    }
    for p in ipam.check_consistency()? {
        if !p.starts_with("unreadable record") {
            problems.push(problem(ProblemKind::IpamInconsistent, "ipam", p));
        }
    }
    let now = now_ms();
    let grace_ms = opts.grace.as_millis() as i64;
    let mut leaked = Vec::new();
    for h in &handles {
        if endpoints.iter().any(|r| uses(&r.ep, h)) {
            continue;
        }
        let age_ms = h.created_ms.map(|c| now - c);
        if age_ms.is_some_and(|a| a < grace_ms) {
            continue;
        }
        let age = match age_ms {
            Some(a) => format!("{} s old", a / 1000),
            None => "of unknown age".into(),
        };
        problems.push(problem(
            ProblemKind::LeakedAllocation,
            format!("handle {}", h.handle),
            format!(
                "holds {} for host {}; no endpoint record uses it ({age})",
                addrs(&h.addrs),
                h.attrs.host
            ),
        ));
        leaked.push((problems.len() - 1, h.handle.clone()));
    }
    let local: Vec<&Record> = endpoints
        .iter()
        .filter(|r| r.ep.host == opts.hostname)
        .collect();
    let mut gone_links = Vec::new();
    for Record { key, rev, ep } in local.iter().copied() {
        if !links.contains(&ep.iface) && !dp::link_exists(&ep.iface)? {
            problems.push(problem(
                ProblemKind::RecordWithoutLink,
                key.trim_start_matches(ENDPOINTS),
                format!(
                    "container {} ({}) has no interface {} on this host",
                    ep.container_id,
                    addrs(&ep.addrs().collect::<Vec<_>>()),
                    ep.iface
                ),
            ));
            gone_links.push((problems.len() - 1, key.clone(), *rev));
        }
    }
    let named: BTreeMap<&str, &Endpoint> = endpoints
        .iter()
        .map(|r| (r.ep.iface.as_str(), &r.ep))
        .collect();
    let mut orphans = Vec::new();
    for link in &links {
        match named.get(link.as_str()) {
            Some(ep) if ep.host == opts.hostname => {}
            Some(ep) => problems.push(problem(
                ProblemKind::LinkOfAnotherHost,
                link,
                format!(
                    "the record of container {} on host {:?} names it: is this host {:?}? (--hostname)",
                    ep.container_id, ep.host, ep.host
                ),
            )),
            None => {
                problems.push(problem(
                    ProblemKind::LinkWithoutRecord,
                    link,
                    "no endpoint record names this interface",
                ));
                orphans.push((problems.len() - 1, link.clone()));
            }
        }
    }
    if opts.repair {
        repair(
            store,
            opts,
            &mut problems,
            &leaked,
            &gone_links,
            &orphans,
            !bad_endpoints.is_empty(),
        )?;
    }
    problems.sort_by(|a, b| (a.kind, &a.subject).cmp(&(b.kind, &b.subject)));
    Ok(Report {
        hostname: opts.hostname.clone(),
        allocations: handles.len() + bad_handles.len(),
        endpoints: endpoints.len() + bad_endpoints.len(),
        local_endpoints: local.len(),
        links: links.len(),
        repair: opts.repair,
        problems,
    })
}

fn repair(
    store: &dyn Store,
    opts: &CheckOptions,
    problems: &mut [Problem],
    leaked: &[(usize, String)],
    gone_links: &[(usize, String, i64)],
    orphans: &[(usize, String)],
    unreadable_endpoints: bool,
) -> Result<(), CoreError> {
    let mut done = |i: usize, action: String, repaired: bool| {
        problems[i].action = Some(action);
        problems[i].repaired = repaired;
    };
    if unreadable_endpoints {
        // An unreadable record may use any handle or name any interface.
        let why = "not repaired: some endpoint records cannot be read, and one may use it";
        for (i, _) in leaked {
            done(*i, why.into(), false);
        }
        for (i, _) in orphans {
            done(*i, why.into(), false);
        }
    }
    if leaked.is_empty() && gone_links.is_empty() && orphans.is_empty() {
        return Ok(());
    }
    std::thread::sleep(opts.settle);
    let (endpoints, _) = read_endpoints(store)?;
    let ipam = Ipam::new(store);
    if !unreadable_endpoints {
        for (i, handle) in leaked {
            let Some(h) = ipam.handle(handle)? else {
                done(*i, "gone meanwhile".into(), true);
                continue;
            };
            if endpoints.iter().any(|r| uses(&r.ep, &h)) {
                done(*i, "not repaired: an endpoint uses it now".into(), false);
                continue;
            }
            match ipam.release_handle(handle) {
                Ok(released) => done(*i, format!("released {}", addrs(&released)), true),
                Err(IpamError::UnknownHandle(_)) => done(*i, "gone meanwhile".into(), true),
                Err(e) => done(*i, format!("release failed: {e}"), false),
            }
        }
    }
    for (i, key, rev) in gone_links {
        let Some(kv) = store.get(key)? else {
            done(*i, "gone meanwhile".into(), true);
            continue;
        };
        let Some(Record { ep, .. }) = endpoints.iter().find(|r| &r.key == key) else {
            done(*i, "gone meanwhile".into(), true);
            continue;
        };
        if kv.mod_revision != *rev || dp::link_exists(&ep.iface)? {
            done(
                *i,
                "not repaired: the record or its interface changed".into(),
                false,
            );
            continue;
        }
        if let Err(e) = crate::attach::forget_record(store, ep) {
            done(*i, format!("deleting the record failed: {e}"), false);
            continue;
        }
        let mut action = "record deleted".to_string();
        if let Some(handle) = &ep.handle {
            let still_used = endpoints
                .iter()
                .any(|r| &r.key != key && r.ep.handle.as_deref() == Some(handle.as_str()));
            if !still_used {
                match ipam.release_handle(handle) {
                    Ok(released) => action.push_str(&format!(
                        ", handle {handle} released ({})",
                        addrs(&released)
                    )),
                    Err(IpamError::UnknownHandle(_)) => {}
                    Err(e) => action.push_str(&format!(", releasing handle {handle} failed: {e}")),
                }
            }
        }
        done(*i, action, true);
    }
    if !unreadable_endpoints {
        for (i, link) in orphans {
            if endpoints.iter().any(|r| &r.ep.iface == link) {
                done(*i, "not repaired: a record names it now".into(), false);
                continue;
            }
            match dp::unplug(link) {
                Ok(true) => done(*i, "interface removed".into(), true),
                Ok(false) => done(*i, "gone meanwhile".into(), true),
                Err(e) => done(*i, format!("removing it failed: {e}"), false),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ipam_reads_hosts_where_the_registry_writes_them() {
        assert_eq!(netmod_ipam::HOSTS_PREFIX, crate::registry::HOSTS);
        assert!(crate::registry::host_key("h1").starts_with(netmod_ipam::HOSTS_PREFIX));
    }
}
