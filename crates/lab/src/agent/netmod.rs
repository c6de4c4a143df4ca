//! The agent's side of the net-modules protocol, as Mesos's network isolator
//! module does it: a new `netmod mesos` process for every request, one JSON
//! object on its stdin, at most 40 KiB of JSON read from its stdout, and a
//! reply whose `error` is not null fails the step.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// What the module reads of a reply, at most.
const MAX_REPLY: u64 = 40 * 1024;
/// A request that takes longer than this fails.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Netmod {
    pub exe: PathBuf,
    pub store: String,
}

/// Labels as the module serialises them from protobuf: `[{"key", "value"}]`.
pub fn labels_json(labels: &BTreeMap<String, String>) -> Value {
    Value::Array(
        labels
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect(),
    )
}

impl Netmod {
    /// One request; the reply (without `error`) or the error sentence.
    pub fn call(&self, command: &str, args: Value) -> Result<Value, String> {
        let request = json!({ "command": command, "args": args }).to_string();
        let mut child = Command::new(&self.exe)
            .arg("--store")
            .arg(&self.store)
            .arg("mesos")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {} mesos: {e}", self.exe.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(request.as_bytes());
        }
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let out_reader = thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut stdout).take(MAX_REPLY).read_to_end(&mut buf);
            // Drain the rest so the plugin never blocks on a full pipe.
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
            buf
        });
        let err_reader = thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut stderr).take(16 * 1024).read_to_end(&mut buf);
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            buf
        });
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "netmod mesos {command} did not answer within {TIMEOUT:?}"
                    ));
                }
                Ok(None) => thread::sleep(Duration::from_millis(2)),
                Err(e) => return Err(format!("waiting for netmod mesos {command}: {e}")),
            }
        };
        let out = out_reader.join().unwrap_or_default();
        let err = err_reader.join().unwrap_or_default();
        let reply: Value = serde_json::from_slice(&out).map_err(|_| {
            format!(
                "netmod mesos {command} answered no JSON (exit {status}): {}{}",
                String::from_utf8_lossy(&out).trim(),
                String::from_utf8_lossy(&err).trim()
            )
        })?;
        match &reply["error"] {
            Value::Null => Ok(reply),
            Value::String(e) => Err(e.clone()),
            other => Err(other.to_string()),
        }
    }
}
