//! Placement, pure: which agent takes a task and which host ports it gets,
//! or why no agent can (the reason the pages show for a waiting task).

use std::collections::BTreeSet;

use crate::marathon::Constraint;

/// What one task needs.
#[derive(Debug, Clone)]
pub struct Need<'a> {
    pub cpus: f64,
    pub mem: f64,
    /// The app's `ports` (0 = any); empty for a task with its own address.
    pub ports: &'a [u16],
    pub require_ports: bool,
    pub constraints: &'a [Constraint],
    /// Hosts of the app's live tasks (for UNIQUE and spreading).
    pub app_hosts: &'a [String],
}

/// What one agent has left.
#[derive(Debug, Clone)]
pub struct Offer {
    pub hostname: String,
    pub cpus_free: f64,
    pub mem_free: f64,
    pub ranges: Vec<(u16, u16)>,
    pub used_ports: BTreeSet<u16>,
    /// Live tasks on the agent (any app), to spread load.
    pub tasks: usize,
}

impl Offer {
    fn offers_port(&self, p: u16) -> bool {
        self.ranges.iter().any(|(a, b)| (*a..=*b).contains(&p)) && !self.used_ports.contains(&p)
    }

    fn free_ports(&self) -> usize {
        let total: usize = self
            .ranges
            .iter()
            .map(|(a, b)| (*b as usize + 1).saturating_sub(*a as usize))
            .sum();
        total.saturating_sub(self.used_ports.len())
    }
}

/// Why one agent cannot take the task.
#[derive(Debug, Clone, PartialEq)]
enum Refusal {
    Constraint(String),
    Cpus { free: f64 },
    Mem { free: f64 },
    Port(u16),
    Ports(usize),
}

const EPS: f64 = 1e-9;

fn check(need: &Need, o: &Offer) -> Result<(), Refusal> {
    let hosts: Vec<&str> = need.app_hosts.iter().map(String::as_str).collect();
    if let Some(c) = need
        .constraints
        .iter()
        .find(|c| !c.allows(&o.hostname, &hosts))
    {
        return Err(Refusal::Constraint(c.describe()));
    }
    if o.cpus_free + EPS < need.cpus {
        return Err(Refusal::Cpus { free: o.cpus_free });
    }
    if o.mem_free + EPS < need.mem {
        return Err(Refusal::Mem { free: o.mem_free });
    }
    if need.require_ports {
        if let Some(p) = need.ports.iter().find(|p| !o.offers_port(**p)) {
            return Err(Refusal::Port(*p));
        }
    } else if o.free_ports() < need.ports.len() {
        return Err(Refusal::Ports(need.ports.len()));
    }
    Ok(())
}

/// Picks the agent (index into `offers`) and the host ports, or explains why
/// none fits. Spreads: fewest tasks of this app, then fewest tasks overall.
pub fn place(need: &Need, offers: &[Offer], seed: u64) -> Result<(usize, Vec<u16>), String> {
    if offers.is_empty() {
        return Err("no agents are registered".into());
    }
    let mut fits = Vec::new();
    let mut refusals = Vec::new();
    for (i, o) in offers.iter().enumerate() {
        match check(need, o) {
            Ok(()) => fits.push(i),
            Err(r) => refusals.push((o.hostname.as_str(), r)),
        }
    }
    let Some(&best) = fits.iter().min_by_key(|&&i| {
        let o = &offers[i];
        let mine = need.app_hosts.iter().filter(|h| **h == o.hostname).count();
        (mine, o.tasks, i)
    }) else {
        return Err(explain(need, &refusals));
    };
    let o = &offers[best];
    let ports = if need.require_ports {
        need.ports.to_vec()
    } else {
        pick_ports(o, need.ports.len(), seed)
    };
    Ok((best, ports))
}

/// `n` distinct free ports from the agent's ranges, spread pseudo-randomly.
fn pick_ports(o: &Offer, n: usize, seed: u64) -> Vec<u16> {
    let free: Vec<u16> = o
        .ranges
        .iter()
        .flat_map(|(a, b)| *a..=*b)
        .filter(|p| !o.used_ports.contains(p))
        .collect();
    let mut out = Vec::with_capacity(n);
    let mut x = seed | 1;
    while out.len() < n && out.len() < free.len() {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let p = free[(x % free.len() as u64) as usize];
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

fn explain(need: &Need, refusals: &[(&str, Refusal)]) -> String {
    let same_kind = |f: fn(&Refusal) -> bool| refusals.iter().all(|(_, r)| f(r));
    if same_kind(|r| matches!(r, Refusal::Port(_))) {
        let ports: BTreeSet<u16> = refusals
            .iter()
            .filter_map(|(_, r)| match r {
                Refusal::Port(p) => Some(*p),
                _ => None,
            })
            .collect();
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        let noun = if list.len() == 1 { "port" } else { "ports" };
        return format!("no agent offers {noun} {}", list.join(", "));
    }
    if same_kind(|r| matches!(r, Refusal::Cpus { .. })) {
        let most = refusals
            .iter()
            .filter_map(|(_, r)| match r {
                Refusal::Cpus { free } => Some(*free),
                _ => None,
            })
            .fold(0.0, f64::max);
        return format!(
            "no agent has {} cpus free (most free: {})",
            trim(need.cpus),
            trim(most)
        );
    }
    if same_kind(|r| matches!(r, Refusal::Mem { .. })) {
        let most = refusals
            .iter()
            .filter_map(|(_, r)| match r {
                Refusal::Mem { free } => Some(*free),
                _ => None,
            })
            .fold(0.0, f64::max);
        return format!(
            "no agent has {} MB of memory free (most free: {})",
            trim(need.mem),
            trim(most)
        );
    }
    if let [(_, Refusal::Constraint(c)), ..] = refusals {
        if refusals
            .iter()
            .all(|(_, r)| r == &Refusal::Constraint(c.clone()))
        {
            return format!("no agent satisfies the constraint {c}");
        }
    }
    refusals
        .iter()
        .map(|(h, r)| format!("{h}: {}", describe(r, need)))
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe(r: &Refusal, need: &Need) -> String {
    match r {
        Refusal::Constraint(c) => format!("constraint {c}"),
        Refusal::Cpus { free } => format!("{} cpus free, needs {}", trim(*free), trim(need.cpus)),
        Refusal::Mem { free } => format!("{} MB free, needs {}", trim(*free), trim(need.mem)),
        Refusal::Port(p) => format!("port {p} not offered"),
        Refusal::Ports(n) => format!("fewer than {n} free ports"),
    }
}

/// 0.30000000000000004 → "0.3".
pub fn trim(x: f64) -> String {
    let s = format!("{:.3}", x);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(h: &str, used: &[u16], tasks: usize) -> Offer {
        Offer {
            hostname: h.into(),
            cpus_free: 4.0,
            mem_free: 4096.0,
            ranges: vec![(9000, 31100)],
            used_ports: used.iter().copied().collect(),
            tasks,
        }
    }

    fn need<'a>(ports: &'a [u16], require: bool, hosts: &'a [String]) -> Need<'a> {
        Need {
            cpus: 0.1,
            mem: 64.0,
            ports,
            require_ports: require,
            constraints: &[],
            app_hosts: hosts,
        }
    }

    #[test]
    fn required_ports_decide_and_explain() {
        let offers = [offer("a1", &[9000], 1), offer("a2", &[], 1)];
        assert_eq!(
            place(&need(&[9000], true, &[]), &offers, 1).unwrap(),
            (1, vec![9000])
        );
        let full = [offer("a1", &[9000], 1), offer("a2", &[9000], 1)];
        assert_eq!(
            place(&need(&[9000], true, &[]), &full, 1).unwrap_err(),
            "no agent offers port 9000"
        );
        let outside = [offer("a1", &[], 0)];
        assert_eq!(
            place(&need(&[80], true, &[]), &outside, 1).unwrap_err(),
            "no agent offers port 80"
        );
    }

    #[test]
    fn own_address_takes_no_port_and_spreads() {
        let hosts = vec!["a1".to_string()];
        let offers = [offer("a1", &[], 0), offer("a2", &[], 5)];
        assert_eq!(
            place(&need(&[], false, &hosts), &offers, 1).unwrap(),
            (1, vec![])
        );
        assert_eq!(
            place(&need(&[], false, &[]), &offers, 1).unwrap(),
            (0, vec![])
        );
    }

    #[test]
    fn any_ports_are_free_and_distinct() {
        let used: Vec<u16> = (9000..=31098).collect();
        let offers = [offer("a1", &used, 0)];
        let (_, ports) = place(&need(&[0, 0], false, &[]), &offers, 42).unwrap();
        let mut sorted = ports.clone();
        sorted.sort();
        assert_eq!(sorted, vec![31099, 31100]);
        assert!(place(&need(&[0, 0, 0], false, &[]), &offers, 42).is_err());
    }

    #[test]
    fn resources_explained() {
        let mut o = offer("a1", &[], 0);
        o.cpus_free = 0.05;
        let e = place(&need(&[], false, &[]), &[o.clone()], 1).unwrap_err();
        assert_eq!(e, "no agent has 0.1 cpus free (most free: 0.05)");
        let mut o2 = offer("a2", &[9000], 0);
        o2.mem_free = 10.0;
        let e = place(&need(&[9000], true, &[]), &[o, o2], 1).unwrap_err();
        assert!(
            e.contains("a1: 0.05 cpus free") && e.contains("a2: 10 MB free"),
            "{e}"
        );
        let unique = [Constraint::Unique];
        let hosts = vec!["a1".to_string()];
        let n = Need {
            constraints: &unique,
            ..need(&[], false, &hosts)
        };
        assert_eq!(
            place(&n, &[offer("a1", &[], 0)], 1).unwrap_err(),
            "no agent satisfies the constraint hostname UNIQUE"
        );
        assert_eq!(trim(0.30000000000000004), "0.3");
    }
}
