//! The Mesos-like master state (`/master/state.json`): agents with their
//! resources, the Marathon framework with its active and completed tasks, in
//! the shape Mesos 0.28 wrote and Mesos-DNS reads (task statuses carry
//! `container_status.network_infos[].ip_addresses[]`, tasks of apps with
//! `ipAddress` carry `discovery`).

use serde_json::{json, Value};

use crate::master::state::{Agent, State, Task};

/// Host ports as Mesos writes a ranges resource: `[9000-9000, 31005-31005]`.
pub fn ranges_text(ports: &[(u16, u16)]) -> String {
    let parts: Vec<String> = ports.iter().map(|(a, b)| format!("{a}-{b}")).collect();
    format!("[{}]", parts.join(", "))
}

fn port_ranges(ports: &[u16]) -> String {
    let mut sorted = ports.to_vec();
    sorted.sort();
    let mut ranges: Vec<(u16, u16)> = Vec::new();
    for p in sorted {
        match ranges.last_mut() {
            Some((_, b)) if *b + 1 == p => *b = p,
            _ => ranges.push((p, p)),
        }
    }
    ranges_text(&ranges)
}

fn network_infos(t: &Task) -> Value {
    let Some(net) = &t.network else {
        return json!([]);
    };
    let labels: Vec<Value> = net
        .labels
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect();
    json!([{
        "ip_addresses": t.ip_addresses.iter().map(|ip| json!({"ip_address": ip, "protocol": "IPv4"})).collect::<Vec<_>>(),
        "groups": net.groups,
        "labels": {"labels": labels},
    }])
}

/// One task, Mesos-style.
pub fn task_json(s: &State, t: &Task) -> Value {
    let slave_id = s
        .agents
        .get(&t.agent)
        .map(|a| a.id.clone())
        .unwrap_or_default();
    let netinfos = network_infos(t);
    let statuses: Vec<Value> = t
        .statuses
        .iter()
        .map(|(state, ts)| {
            let mut st = json!({"state": state, "timestamp": ts});
            if state == crate::wire::RUNNING || crate::wire::is_terminal(state) {
                st["container_status"] = json!({"network_infos": netinfos});
                if let Some(c) = &t.container_id {
                    st["container_status"]["container_id"] = json!({ "value": c });
                }
            }
            st
        })
        .collect();
    let labels: Vec<Value> = t
        .labels
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect();
    let mut v = json!({
        "id": t.id,
        "name": t.name,
        "framework_id": s.framework_id,
        "executor_id": "",
        "slave_id": slave_id,
        "state": t.state,
        "resources": {
            "cpus": t.cpus,
            "mem": t.mem,
            "disk": 0.0,
            "ports": port_ranges(&t.host_ports),
        },
        "statuses": statuses,
        "labels": labels,
        // Lab extras: the host name, the message of the last status, the
        // sandbox, the container.
        "hostname": t.agent,
        "message": t.message,
        "sandbox": t.sandbox,
        "container_id": t.container_id,
    });
    if t.network.is_some() {
        v["discovery"] = json!({
            "visibility": "FRAMEWORK",
            "name": t.name,
            "ports": {"ports": t.discovery_ports.iter().map(|p| json!({
                "number": p.number, "name": p.name, "protocol": p.protocol})).collect::<Vec<_>>()},
        });
        v["container"] = json!({
            "type": "MESOS",
            "network_infos": [{"ip_addresses": [{}], "groups": t.network.as_ref().map(|n| n.groups.clone())}],
        });
    }
    v
}

fn used(s: &State, a: &Agent) -> (f64, f64, Vec<u16>) {
    let live = s
        .tasks
        .values()
        .filter(|t| t.agent == a.hostname && t.is_live());
    let (mut cpus, mut mem, mut ports) = (0.0, 0.0, Vec::new());
    for t in live {
        cpus += t.cpus;
        mem += t.mem;
        ports.extend(t.host_ports.iter().copied());
    }
    (cpus, mem, ports)
}

/// One agent, Mesos-style.
pub fn agent_json(s: &State, a: &Agent) -> Value {
    let (cpus, mem, ports) = used(s, a);
    json!({
        "id": a.id,
        "pid": format!("slave(1)@{}:{}", a.ip, a.port),
        "hostname": a.hostname,
        "registered_time": a.registered_at,
        "last_seen": a.last_seen,
        "active": a.active,
        "resources": {"cpus": a.cpus, "mem": a.mem, "disk": 0.0, "ports": ranges_text(&a.ports)},
        "used_resources": {"cpus": cpus, "mem": mem, "disk": 0.0, "ports": port_ranges(&ports)},
        "attributes": {},
    })
}

/// The whole state.
pub fn state_json(s: &State, port: u16) -> Value {
    let tasks: Vec<Value> = s.tasks.values().map(|t| task_json(s, t)).collect();
    let completed: Vec<Value> = s.completed.iter().map(|t| task_json(s, t)).collect();
    let agents: Vec<Value> = s.agents.values().map(|a| agent_json(s, a)).collect();
    json!({
        "version": "0.28.0 (netmod lab)",
        "id": s.master_id,
        "pid": format!("master@127.0.0.1:{port}"),
        "hostname": "nmlab-master",
        "start_time": s.started_at,
        "activated_slaves": s.agents.values().filter(|a| a.active).count(),
        "deactivated_slaves": s.agents.values().filter(|a| !a.active).count(),
        "slaves": agents,
        "frameworks": [{
            "id": s.framework_id,
            "name": "marathon",
            "hostname": "nmlab-master",
            "active": true,
            "tasks": tasks,
            "completed_tasks": completed,
        }],
        "completed_frameworks": [],
        "lab_version": s.version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            port_ranges(&[9001, 9000, 31005]),
            "[9000-9001, 31005-31005]"
        );
        assert_eq!(port_ranges(&[]), "[]");
        assert_eq!(ranges_text(&[(9000, 31100)]), "[9000-31100]");
    }
}
