//! `netmod bench policy`: the cost of Calico policies — one new endpoint's
//! nftables transaction and whole isolate with 10 … 1,000 policies in force,
//! the time from a policy write until every host enforces it, and
//! throughput with 100 policies selecting the measured pair.
//!
//! Everything runs in network namespaces this run creates (`nmbench-<pid>-*`,
//! the dataplane benchmark's fake hosts) and is removed at the end; no packet
//! and no route touches the machine's own network.

mod gen;
mod propagation;
mod scale;
mod throughput;

use crate::dataplane::fabric::{other, Fabric};
use crate::dataplane::{div, loadavg, p50, p99, thousands, us, verdict, which};
use crate::{ms, render, BenchArgs, BenchError, Row};
use std::time::{Duration, Instant};

/// Seconds per iperf3 run.
const IPERF_SECONDS: u32 = 5;

pub fn run(args: &BenchArgs) -> Result<String, BenchError> {
    preflight()?;
    let exe = crate::netmod_exe().map_err(|e| other(format!("finding netmod itself: {e}")))?;
    let started = Instant::now();
    let load_before = loadavg();
    let prefix;
    let (scale, props, tput) = {
        let mut fabric = Fabric::new()?;
        prefix = fabric.prefix.clone();
        let scale = scale::measure(&mut fabric, &exe, args.policy_isolates)?;
        let mut props = Vec::new();
        for &hosts in &args.policy_hosts {
            props.push(propagation::measure(
                &mut fabric,
                &exe,
                hosts,
                args.policy_rounds,
            )?);
            // Let the kernel finish tearing down the nodes' sockets.
            std::thread::sleep(Duration::from_secs(1));
        }
        let tput = throughput::measure(&mut fabric, &exe, IPERF_SECONDS)?;
        (scale, props, tput)
        // The fabric drops here: processes killed, namespaces deleted.
    };
    let left = Fabric::leftovers(&prefix);
    if !left.is_empty() {
        return Err(other(format!(
            "namespaces left behind: {} (remove with `ip netns del`)",
            left.join(", ")
        )));
    }
    let load = format!("{load_before} at the start, {} at the end", loadavg());
    Ok(report(
        args,
        &scale,
        &props,
        &tput,
        started.elapsed(),
        &load,
    ))
}

fn preflight() -> Result<(), BenchError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(other(
            "the policy benchmark creates network namespaces: run it as root",
        ));
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("unshare", "util-linux"),
        ("nft", "nftables"),
        ("iperf3", "iperf3"),
    ] {
        if which(tool).is_none() {
            return Err(other(format!(
                "{tool} is missing: run scripts/setup.sh (or apt-get install {package})"
            )));
        }
    }
    Ok(())
}

fn report(
    args: &BenchArgs,
    scale: &[scale::Case],
    props: &[propagation::Propagation],
    tput: &throughput::Throughput,
    took: Duration,
    load: &str,
) -> String {
    let mut rows = Vec::new();
    let mut targets = Vec::new();

    // 1. One new endpoint, policies × endpoints. The target is flat cost in
    // the number of endpoints: each number of policies is a series whose
    // smallest case (10 endpoints) is its baseline. How the cost grows
    // with the number of policies is shown beside it, against 10 policies.
    if let Some(first) = scale.first() {
        for (what, nft) in [("nftables transaction", true), ("whole `isolate`", false)] {
            let pick = |c: &scale::Case| if nft { p50(&c.nft) } else { p50(&c.isolate) };
            let show = |d| if nft { us(d) } else { ms(d) };
            let mut worst = 0.0f64;
            let mut worst_case = String::new();
            for c in scale {
                let Some(base) = scale.iter().find(|b| b.policies == c.policies) else {
                    continue;
                };
                let b = pick(base);
                let r = div(pick(c), b);
                let is_base = c.endpoints == base.endpoints;
                if !is_base && r > worst {
                    worst = r;
                    worst_case = format!(
                        "{} policies, {} endpoints",
                        thousands(c.policies),
                        thousands(c.endpoints)
                    );
                }
                let vs_fewest_policies = div(pick(c), pick(first));
                rows.push(Row {
                    what: format!(
                        "{what} adding 1 endpoint, {} policies, {} endpoints (p50)",
                        thousands(c.policies),
                        thousands(c.endpoints)
                    ),
                    value: show(pick(c)),
                    baseline: format!(
                        "{} policies, {} endpoints: {}",
                        thousands(base.policies),
                        thousands(base.endpoints),
                        show(b)
                    ),
                    ratio: if is_base {
                        format!(
                            "1.00x ({vs_fewest_policies:.2}x of {} policies, {} endpoints)",
                            first.policies, first.endpoints
                        )
                    } else {
                        format!(
                            "{r:.2}x (target ≤ 1.5x: {}; {vs_fewest_policies:.2}x of {} policies, {} endpoints)",
                            verdict(r <= 1.5),
                            first.policies,
                            first.endpoints
                        )
                    },
                });
            }
            targets.push(format!(
                "{what} for one new endpoint within 1.5x of the smallest case (10 endpoints) of its number of policies, in every case: {} (worst {worst:.2}x, {worst_case})",
                verdict(worst <= 1.5)
            ));
        }
    }

    // 2. Propagation.
    for p in props {
        let (pol50, pol99) = (p50(&p.policy), p99(&p.policy));
        let (ep50, ep99) = (p50(&p.endpoint), p99(&p.endpoint));
        rows.push(Row {
            what: format!(
                "policy created/deleted → every one of {} hosts reports it applied, p50 ({} writes)",
                p.hosts,
                p.policy.len()
            ),
            value: ms(pol50),
            baseline: format!("endpoint record created/deleted: {}", ms(ep50)),
            ratio: format!("{:.2}x", div(pol50, ep50)),
        });
        rows.push(Row {
            what: format!(
                "policy created/deleted → every one of {} hosts reports it applied, p99",
                p.hosts
            ),
            value: ms(pol99),
            baseline: format!("endpoint record created/deleted: {}", ms(ep99)),
            ratio: format!("{:.2}x", div(pol99, ep99)),
        });
    }

    // 3. Throughput.
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let list = |v: &[f64]| {
        v.iter()
            .map(|g| format!("{g:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (with, without, ct) = (
        mean(&tput.with_table),
        mean(&tput.without_table),
        mean(&tput.conntrack_only),
    );
    let pct = 100.0 * with / without;
    targets.push(format!(
        "throughput with {} policies selecting the pair ≥ 95 % of no table: {} ({pct:.1} %; conntrack-only table {:.1} %)",
        throughput::POLICIES,
        verdict(pct >= 95.0),
        100.0 * ct / without
    ));
    rows.push(Row {
        what: format!(
            "iperf3 TCP container → container across hosts, {} policies × {} rules selecting the pair, {} other endpoints (mean of {} × {} s)",
            throughput::POLICIES,
            gen::RULES,
            thousands(crate::dataplane::throughput::OTHER_ENDPOINTS),
            tput.with_table.len(),
            tput.seconds
        ),
        value: format!("{with:.2} Gbit/s ({})", list(&tput.with_table)),
        baseline: format!(
            "no table: {without:.2} Gbit/s ({})",
            list(&tput.without_table)
        ),
        ratio: format!("{pct:.1} % (target ≥ 95 %: {})", verdict(pct >= 95.0)),
    });
    rows.push(Row {
        what: "the same path with a table holding only `ct state established,related accept`"
            .into(),
        value: format!("{ct:.2} Gbit/s ({})", list(&tput.conntrack_only)),
        baseline: format!("no table: {without:.2} Gbit/s"),
        ratio: format!(
            "{:.1} % (policy table vs this: {:.1} %)",
            100.0 * ct / without,
            100.0 * with / ct
        ),
    });

    let tables = scale
        .iter()
        .map(|c| {
            format!(
                "| {} | {} | {} | {} | {} | {} | {:.0} ms |",
                thousands(c.policies),
                thousands(c.endpoints),
                thousands(c.rules),
                thousands(c.sets),
                c.selecting,
                c.changes,
                c.load.as_secs_f64() * 1000.0
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let sync = props
        .iter()
        .map(|p| {
            format!(
                "{} nodes reported their first full sync {:.0} ms after the first was started",
                p.hosts,
                p.started_in.as_secs_f64() * 1000.0
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let verified = props
        .iter()
        .flat_map(|p| p.verified.iter().cloned())
        .collect::<Vec<_>>()
        .join("; ");
    let first = scale.first();
    let notes = format!(
        "How measured. Fake hosts are network namespaces on a bridge in a fabric namespace (the \
dataplane benchmark's, `nmbench-<pid>-*`, deleted at the end); containers are fresh network \
namespaces with a process in them. Pool addresses are routed only inside those namespaces.\n\n\
Policies: synthetic Calico GlobalNetworkPolicies parsed with `netmod_calico::parse_policies` and \
stored with `netmod_core::policies::apply`. Policy k (order k) selects `app == 'a<k mod 100>'` \
and has {rules} rules, 7 ingress and 3 egress: Allow TCP from `app == 'a<k+1>'` to ports 80, 443, \
8000-8099; Deny UDP from 10.200.x.0/24 to port 53; Log TCP to port 22; Allow ICMP type 8; Pass \
from `tier == 't<k mod 5>'`; Deny TCP from 10.98.0.0/16 or 10.99.x.0/24; Allow TCP to port 9000+k; \
egress Deny UDP to 10.97.0.0/16, Allow UDP to ports 5000-5999 not in 10.0.0.0/8, Allow TCP to \
port 9000+k. Synthetic endpoint i has labels `app=a<i mod 100>`, `tier=t<i mod 5>`, one of 50 \
netgroups.\n\n\
1. One new endpoint: for each number of policies (a store of its own) and of endpoints \
(synthetic records, spread round-robin over {hosts} hosts, this one among them: one in ten is \
local), the host's table is `netmod_policy::ruleset_with_policies` over all of them, loaded \
with the dataplane benchmark's loader (base table, policy chains and selector sets in one \
`nft_replace_all`, then the netgroups' sets and rules in `nft_apply` transactions of at most 32 \
changes). `nft_replace_all` loaded every table in one transaction, 1,000 policies and 5,000 \
endpoints included. The new endpoint has the labels `app=a0, tier=t0` and a netgroup, so the \
policies 0, 100, 200, … select it and the source selectors of others name it. (a) \
`netmod_dataplane::nft_apply` of the change list attach builds for it (its address into \
`grouped_v4`, its netgroup's set, and the `endpoint_policy_sets` that exist in the table), in \
process on a thread in the host's namespace, {tx} times per case, each removed again untimed. \
(b) the whole `netmod mesos isolate` process for a new container with those labels (labels in \
the request), {iso} per case, each cleaned up again untimed; spawn → exit, including process \
start, on an SQLite store. The ratio is to the 10-endpoint case with the same number of policies (the target: cost flat in endpoints); in brackets, to the 10 policies / 10 endpoints case (growth with policies). Tables per case:\n\n\
| policies | endpoints | rules in the table | sets | policies selecting the new endpoint | changes in its transaction | loading the table |\n\
|---|---|---|---|---|---|---|\n{tables}\n\n\
2. Propagation: N real `netmod node` processes (N = {hosts_list}), each in a fake host of its \
own, sharing one SQLite store (file on disk), with {base_pol} policies and {prop_eps} endpoint \
records (on hosts that run no node) in force. Nodes run with `--lease-ttl {ttl}` (the shortest \
they take: the heartbeat that writes the host record, with `applied_revision`, runs every \
third of it, so every {beat:.0} ms) and `--resync-interval {resync}`; each follows SQLite's \
change feed, which polls every 10 ms. A write: the policy `{pol}` (selector `app == 'a1'`, \
{rules} rules) created with `netmod_core::policies::apply`, or deleted, alternately; its store \
revision is the record's; the time runs from the start of the write until every host record \
reports `applied_revision` ≥ that revision (the benchmark reads the host records every {poll} ms). \
Baseline, in the same run, interleaved: an endpoint record (`app=a1`, on a host without a node, \
so that it joins a selector set on every host) created or deleted the same way. A policy \
write makes every node install its whole table (`nft_replace_all`, atomically); an endpoint \
write, set elements only. {rounds} writes of each kind after one untimed create/delete pair, \
with pauses of 100-500 ms between writes so that they land at every phase of the heartbeat. \
Both latencies are bounded below by the heartbeat: a node writes its host record at its next \
beat after it applied, so the last of N hosts reports up to {beat:.0} ms late. Checked in the \
kernel after the untimed writes (`nft list chain inet netmod pe_|pi_{pol}` in the host's \
namespace): {verified}. {sync}.\n\n\
3. Throughput: two fake hosts, one container on each, isolated by `netmod mesos isolate` with \
the label `role=iperf` in the same netgroup; {tpol} policies like the above (policy k selects \
`app == 'a<k>' || role == 'iperf'`, so all select the pair), {other} other endpoints on 10 \
hosts; both tables ({trules} rules) are `ruleset_with_policies` over everything, with routes \
to the other host's blocks. iperf3 runs on port {port}, which only the last policy's rules \
allow, so a new connection walks every policy chain, egress on the sender's host and ingress \
on the receiver's, each chain's rules in full (the pair is in every selector set); packets of \
the established connection are accepted by the conntrack rule before the policy chains. A \
connection to iperf3's default port 5201, which no policy allows, {refused}. `iperf3 -c -t \
{secs} -O 1` in the client container; with the table, with no table on either host, and with a \
table holding only a conntrack accept rule, in rotation, twice each. Without a table nothing in \
those namespaces uses connection tracking, so the kernel tracks no connection at all; the \
conntrack-only table switches tracking on and does nothing else, and it costs the path about as \
much as netmod's whole table: what the 95 % target misses by is connection tracking itself, \
which stateful policy needs (the kernel here has no flowtables to offload it).\n\n\
Targets:\n\n{targets}\n\n\
The whole run took {took:.0} s (load average {load}; the machine is shared). Every interface, \
address, route, nftables table and process it made lived in its own namespaces and was removed \
at the end (checked with `ip netns list`).\n",
        rules = gen::RULES,
        hosts = scale::HOSTS,
        tx = first.map_or(0, |c| c.nft.len()),
        iso = first.map_or(0, |c| c.isolate.len()),
        hosts_list = args
            .policy_hosts
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>()
            .join(" and "),
        base_pol = propagation::BASE_POLICIES,
        prop_eps = propagation::ENDPOINTS,
        ttl = propagation::LEASE_TTL_SECS,
        beat = propagation::LEASE_TTL_SECS as f64 * 1000.0 / 3.0,
        resync = propagation::RESYNC_SECS,
        pol = propagation::POLICY,
        poll = propagation::POLL.as_millis(),
        rounds = props.first().map_or(0, |p| p.policy.len()),
        tpol = throughput::POLICIES,
        other = thousands(crate::dataplane::throughput::OTHER_ENDPOINTS),
        trules = thousands(tput.rules),
        port = tput.port,
        refused = if tput.refused_elsewhere {
            "was refused with the table in place (the policies are in force)"
        } else {
            "was NOT refused with the table in place (unexpected)"
        },
        secs = tput.seconds,
        targets = targets
            .iter()
            .map(|t| format!("- {t}"))
            .collect::<Vec<_>>()
            .join("\n"),
        took = took.as_secs_f64(),
    );
    render("Policy benchmark", &notes, &rows)
}
