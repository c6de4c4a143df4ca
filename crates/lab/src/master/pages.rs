//! The two pages: Marathon's (apps, tasks, why tasks wait, their output) and
//! Mesos's (agents and resources, active and completed tasks). Plain HTML,
//! refreshed every two seconds, nothing loaded from anywhere else.

use std::fmt::Write;

use super::placement::trim;
use super::state::{State, Task};
use crate::config::MasterPorts;
use crate::mesos_state::ranges_text;
use crate::util::{esc, iso};
use crate::wire;

const STYLE: &str = "
body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif;color:#1c2230;background:#f5f6f9}
header{display:flex;gap:18px;align-items:baseline;padding:12px 22px;background:#fff;border-bottom:1px solid #dfe3ea}
h1{margin:0;font-size:19px}h2{font-size:15px;margin:0 0 8px}
header a,td a{color:#2357c5}
main{padding:16px 22px;display:flex;flex-direction:column;gap:16px}
section{background:#fff;border:1px solid #dfe3ea;border-radius:8px;padding:12px 14px;overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceff4;vertical-align:top;white-space:nowrap}
td.wrap{white-space:normal}
th{color:#5b6477;font-weight:600}
.ok{color:#137333;font-weight:600}.wait{color:#9a6700;font-weight:600}.bad{color:#b42318;font-weight:600}
.muted{color:#5b6477}code{font-size:12px}
";

/// Refreshes `<main>` in place every two seconds (no reload: the scroll
/// position stays, and a headless browser's virtual time can settle).
const REFRESH: &str =
    "setInterval(async()=>{try{const r=await fetch(location.href,{cache:'no-store'});\
const d=new DOMParser().parseFromString(await r.text(),'text/html');\
document.querySelector('main').replaceWith(d.querySelector('main'));}catch(e){}},2000);";

fn page(title: &str, nav: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title}</title><style>{STYLE}</style></head>\
         <body><header><h1>{title}</h1><span class=\"muted\">netmod lab</span>{nav}</header><main>{body}</main>\
         <script>{REFRESH}</script></body></html>"
    )
}

fn state_class(state: &str) -> &'static str {
    match state {
        wire::RUNNING => "ok",
        wire::STAGING | wire::STARTING => "wait",
        wire::FINISHED => "muted",
        _ => "bad",
    }
}

/// The task's own addresses, or its agent's address and host ports.
fn addresses(s: &State, t: &Task) -> String {
    if !t.ip_addresses.is_empty() {
        return format!("{} (own)", t.ip_addresses.join(", "));
    }
    if t.network.is_some() {
        return "(own address pending)".into();
    }
    let host = s
        .agents
        .get(&t.agent)
        .map_or(t.agent.as_str(), |a| a.ip.as_str());
    let ports: Vec<String> = t.host_ports.iter().map(|p| format!("{host}:{p}")).collect();
    if ports.is_empty() {
        format!("{host} (host network)")
    } else {
        format!("{} (host)", ports.join(", "))
    }
}

/// Links to the task's output: both pages serve it, so they are relative.
fn log_links(t: &Task) -> String {
    if t.sandbox.is_none() {
        return String::new();
    }
    let id = esc(&t.id);
    format!(
        "<a href=\"/tasks/{id}/stdout\">stdout</a> · \
         <a href=\"/tasks/{id}/stderr\">stderr</a>"
    )
}

/// The task's container id (the agent's, as netmod knows the container),
/// with the class tests and tools find it by.
fn container(t: &Task) -> String {
    match &t.container_id {
        Some(c) => format!("<code class=\"container-id\">{}</code>", esc(c)),
        None => "<span class=\"muted\">-</span>".into(),
    }
}

/// Marathon's page.
pub fn marathon(s: &State, ports: &MasterPorts) -> String {
    let mut b = String::new();
    let _ = write!(b, "<section><h2>Applications ({})</h2>", s.apps.len());
    if s.apps.is_empty() {
        b.push_str(
            "<p class=\"muted\">No applications. Launch some with <code>PUT /v2/groups/&lt;id&gt;</code> \
             (e.g. <code>./demo/launch-probes.sh</code>).</p>",
        );
    } else {
        b.push_str(
            "<table><tr><th>ID</th><th>Instances</th><th>Running</th><th>Status</th>\
             <th>CPUs / Mem</th><th>Network</th></tr>",
        );
        for app in s.apps.values() {
            let d = &app.def;
            let running = s
                .tasks
                .values()
                .filter(|t| t.app_id == d.id && t.state == wire::RUNNING)
                .count();
            let status = match s.waiting.get(&d.id) {
                Some(w) => format!(
                    "<span class=\"wait\">Waiting ({}): {}</span>",
                    w.count,
                    esc(&w.reason)
                ),
                None if running as u32 == d.instances => "<span class=\"ok\">Running</span>".into(),
                None => "<span class=\"wait\">Deploying</span>".into(),
            };
            let net = match &d.ip_address {
                Some(ip) => format!("own address; groups {}", esc(&ip.groups.join(", "))),
                None if d.require_ports => format!("host ports {:?} (required)", d.ports),
                None => format!("host ports {:?}", d.ports),
            };
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{running}</td><td>{status}</td><td>{} / {}</td><td>{net}</td></tr>",
                esc(&d.id),
                d.instances,
                trim(d.cpus),
                trim(d.mem)
            );
        }
        b.push_str("</table>");
    }
    b.push_str("</section>");

    if !s.waiting.is_empty() {
        b.push_str("<section><h2>Waiting</h2><table><tr><th>App</th><th>Instances waiting</th><th>Why</th></tr>");
        for (id, w) in &s.waiting {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td class=\"wait\">{}</td></tr>",
                esc(id),
                w.count,
                esc(&w.reason)
            );
        }
        b.push_str("</table></section>");
    }

    let _ = write!(b, "<section><h2>Tasks ({})</h2>", s.tasks.len());
    b.push_str(
        "<table><tr><th>Task</th><th>App</th><th>State</th><th>Host</th><th>Container</th>\
         <th>Addresses</th><th>Started</th><th>Output</th></tr>",
    );
    for t in s.tasks.values() {
        task_row(&mut b, s, t, true);
    }
    b.push_str("</table></section>");

    let recent: Vec<&Task> = s.completed.iter().take(10).collect();
    if !recent.is_empty() {
        b.push_str("<section><h2>Recently ended</h2><table><tr><th>Task</th><th>App</th><th>State</th><th>Host</th><th>Container</th><th>Why</th><th>Output</th></tr>");
        for t in recent {
            let _ = write!(
                b,
                "<tr><td><code>{}</code></td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td class=\"wrap\">{}</td><td>{}</td></tr>",
                esc(&t.id),
                esc(&t.app_id),
                state_class(&t.state),
                esc(&t.state),
                esc(&t.agent),
                container(t),
                esc(t.message.as_deref().unwrap_or("")),
                log_links(t)
            );
        }
        b.push_str("</table></section>");
    }
    let nav = format!("<a href=\"http://127.0.0.1:{}/\">Mesos</a><a href=\"/v2/apps\">/v2/apps</a><a href=\"/v2/tasks\">/v2/tasks</a><a href=\"/v2/queue\">/v2/queue</a>", ports.mesos);
    page("Marathon", &nav, &b)
}

fn task_row(b: &mut String, s: &State, t: &Task, with_app: bool) {
    let app = if with_app {
        format!("<td>{}</td>", esc(&t.app_id))
    } else {
        format!("<td>{}</td>", esc(&t.name))
    };
    let _ = write!(
        b,
        "<tr><td><code>{}</code></td>{app}<td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        esc(&t.id),
        state_class(&t.state),
        esc(&t.state),
        esc(&t.agent),
        container(t),
        esc(&addresses(s, t)),
        t.started_at.map(iso).unwrap_or_default(),
        log_links(t)
    );
}

/// Mesos's page.
pub fn mesos(s: &State, ports: &MasterPorts) -> String {
    let mut b = String::new();
    let active = s.agents.values().filter(|a| a.active).count();
    let _ = write!(
        b,
        "<section><h2>Cluster</h2><p>Agents: <b>{active}</b> active · Active tasks: <b>{}</b> · \
         Completed tasks: <b>{}</b></p></section>",
        s.tasks.len(),
        s.completed.len()
    );
    b.push_str("<section><h2>Agents</h2><table><tr><th>ID</th><th>Host</th><th>Address</th><th>CPUs (used / total)</th><th>Mem (used / total)</th><th>Ports offered</th><th>Ports used</th><th>State</th></tr>");
    for a in s.agents.values() {
        let mine: Vec<&Task> = s
            .tasks
            .values()
            .filter(|t| t.agent == a.hostname && t.is_live())
            .collect();
        let cpus: f64 = mine.iter().map(|t| t.cpus).sum();
        let mem: f64 = mine.iter().map(|t| t.mem).sum();
        let mut ports: Vec<u16> = mine.iter().flat_map(|t| t.host_ports.clone()).collect();
        ports.sort();
        let ports = if ports.is_empty() {
            "none".to_string()
        } else {
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = write!(
            b,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}:{}</td><td>{} / {}</td><td>{} / {}</td>\
             <td>ports(*):{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            esc(&a.id),
            esc(&a.hostname),
            esc(&a.ip),
            a.port,
            trim(cpus),
            trim(a.cpus),
            trim(mem),
            trim(a.mem),
            ranges_text(&a.ports),
            ports,
            if a.active { "ok" } else { "bad" },
            if a.active { "active" } else { "gone" }
        );
    }
    b.push_str("</table></section>");
    let _ = write!(b, "<section><h2>Active tasks ({})</h2>", s.tasks.len());
    b.push_str("<table><tr><th>ID</th><th>Name</th><th>State</th><th>Host</th><th>Container</th><th>Addresses</th><th>Started</th><th>Sandbox</th></tr>");
    for t in s.tasks.values() {
        task_row(&mut b, s, t, false);
    }
    b.push_str("</table></section>");
    let _ = write!(
        b,
        "<section><h2>Completed tasks ({})</h2>",
        s.completed.len()
    );
    b.push_str("<table><tr><th>ID</th><th>Name</th><th>State</th><th>Host</th><th>Container</th><th>Why</th><th>Sandbox</th></tr>");
    for t in s.completed.iter().take(100) {
        let _ = write!(
            b,
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td class=\"wrap\">{}</td><td>{}</td></tr>",
            esc(&t.id),
            esc(&t.name),
            state_class(&t.state),
            esc(&t.state),
            esc(&t.agent),
            container(t),
            esc(t.message.as_deref().unwrap_or("")),
            log_links(t)
        );
    }
    b.push_str("</table></section>");
    let nav = format!(
        "<a href=\"http://127.0.0.1:{}/\">Marathon</a><a href=\"/master/state.json\">state.json</a>",
        ports.marathon
    );
    page("Mesos", &nav, &b)
}
