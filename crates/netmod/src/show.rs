//! `netmod endpoints` and `netmod explain`: the core's answers, printed as a
//! table for people or JSON for scripts.

use crate::output::{self, Format};
use crate::CliError;
use netmod_core::explain::{explain_path, name_of};
use netmod_core::registry::Registry;
use netmod_store::Store;

pub fn endpoints(store: &dyn Store, fmt: Format) -> Result<(), CliError> {
    let eps = Registry::new(store).endpoints()?;
    if fmt == Format::Json {
        output::json(&eps);
        return Ok(());
    }
    output::table(
        &[
            "HOST",
            "CONTAINER",
            "NAME",
            "IFACE",
            "ADDRESSES",
            "NETGROUPS",
        ],
        &eps.iter()
            .map(|e| {
                vec![
                    e.host.clone(),
                    e.container_id.clone(),
                    name_of(e).unwrap_or("-").to_string(),
                    e.iface.clone(),
                    e.addrs()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    if e.netgroups.is_empty() {
                        "-".into()
                    } else {
                        e.netgroups.join(",")
                    },
                ]
            })
            .collect::<Vec<_>>(),
    );
    Ok(())
}

/// Print the verdict; true when the packet is allowed.
pub fn explain(
    store: &dyn Store,
    from: &str,
    to: &str,
    port: Option<String>,
    fmt: Format,
) -> Result<bool, CliError> {
    let verdict = explain_path(store, from, to, port)?;
    match fmt {
        Format::Json => output::json(&verdict),
        Format::Table => {
            println!("{}", verdict.summary);
            for h in &verdict.hops {
                println!(
                    "  {} {}: {} ({}{})",
                    h.host,
                    h.hook,
                    if h.decision.accepted {
                        "accept"
                    } else {
                        "drop"
                    },
                    h.decision.reason,
                    h.decision
                        .rule
                        .as_deref()
                        .map(|r| format!("; rule in {}: {r}", h.decision.chain))
                        .unwrap_or_default()
                );
            }
            for h in &verdict.hops {
                if !h.decision.trail.is_empty() {
                    println!("  {} on the way: {}", h.host, h.decision.trail.join("; "));
                }
            }
        }
    }
    Ok(verdict.allowed)
}
