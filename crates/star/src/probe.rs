//! star-probe: requests each target URL every interval and reports which
//! answered on `GET /status`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{self, HttpUrl};
use crate::flags::{split_list, Flags, Parsed};
use crate::server::{Handler, Listen, Reply};
use crate::Error;

pub const USAGE: &str = "\
Usage: star-probe [--urls=<url,url,...>] [--http-address=<addr>] [--http-port=<port>]
                  [--http-listen-fd=<fd>] [--http-probe-seconds=<secs>] [--logfile=<path>]

Requests each URL every interval; any HTTP response counts as reachable.
GET /status reports {\"status\":{\"targets\":[{\"url\":...,\"reachable\":...}]}}.

  --urls                 comma-separated http:// URLs to probe (empty items dropped)
  --http-address         address to listen on          [default: 0.0.0.0]
  --http-port            port to listen on, 0 for any  [default: 9000]
  --http-listen-fd       serve on this inherited listening socket instead
  --http-probe-seconds   seconds between probes        [default: 5]
  --logfile              append log lines here instead of stderr
Flags take --flag=value or --flag value. Once listening, prints
\"star-probe listening on <address>:<port>\" on stdout.";

const FLAGS: &[&str] = &[
    "urls",
    "http-address",
    "http-port",
    "http-listen-fd",
    "http-probe-seconds",
    "logfile",
];

/// star-probe's validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    pub urls: Vec<HttpUrl>,
    pub listen: Listen,
    pub interval: Duration,
    pub logfile: Option<PathBuf>,
}

impl ProbeConfig {
    /// Parses the command line (without the program name).
    pub fn from_args<I, S>(args: I) -> Result<Parsed<ProbeConfig>, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let Some(flags) = Flags::parse(args, FLAGS)? else {
            return Ok(Parsed::Help);
        };
        let urls = split_list(flags.get("urls").unwrap_or_default())
            .iter()
            .map(|u| u.parse::<HttpUrl>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Flag(format!("--urls: {e}")))?;
        Ok(Parsed::Run(ProbeConfig {
            urls,
            listen: Listen::from_flags(&flags, 9000)?,
            interval: flags.seconds("http-probe-seconds", 5)?,
            logfile: flags.get("logfile").map(PathBuf::from),
        }))
    }
}

/// The probe's targets and what the last probe of each found.
pub struct Probe {
    targets: Vec<Target>,
}

struct Target {
    url: HttpUrl,
    reachable: AtomicBool,
}

/// The body of `GET /status`, fields in the original's order.
#[derive(Debug, Serialize)]
pub struct StatusReport<'a> {
    status: Targets<'a>,
}

#[derive(Debug, Serialize)]
struct Targets<'a> {
    targets: Vec<TargetStatus<'a>>,
}

#[derive(Debug, Serialize)]
struct TargetStatus<'a> {
    url: &'a str,
    reachable: bool,
}

impl Probe {
    /// Every target starts unreachable.
    pub fn new(urls: Vec<HttpUrl>) -> Arc<Probe> {
        let targets = urls
            .into_iter()
            .map(|url| Target {
                url,
                reachable: AtomicBool::new(false),
            })
            .collect();
        Arc::new(Probe { targets })
    }

    /// `{"status": {"targets": [{"url", "reachable"}, ...]}}` in target order.
    pub fn status(&self) -> StatusReport<'_> {
        let targets = self
            .targets
            .iter()
            .map(|t| TargetStatus {
                url: t.url.as_str(),
                reachable: t.reachable.load(Ordering::Relaxed),
            })
            .collect();
        StatusReport {
            status: Targets { targets },
        }
    }

    /// Starts one thread per target, each probing at once and then every
    /// `interval`, so that a target that never answers delays nothing else.
    pub fn start(self: &Arc<Self>, interval: Duration) {
        let timeout = crate::request_timeout(interval);
        for index in 0..self.targets.len() {
            let probe = Arc::clone(self);
            thread::Builder::new()
                .name(format!("probe-{index}"))
                .spawn(move || probe.run_target(index, interval, timeout))
                .expect("spawning a probe thread");
        }
    }

    fn run_target(&self, index: usize, interval: Duration, timeout: Duration) -> ! {
        let target = &self.targets[index];
        let mut last: Option<bool> = None;
        loop {
            let started = Instant::now();
            let result = client::status(&target.url, timeout);
            let reachable = result.is_ok();
            target.reachable.store(reachable, Ordering::Relaxed);
            if last != Some(reachable) {
                match &result {
                    Ok(code) => crate::logln!("{} is reachable (HTTP {code})", target.url),
                    Err(e) => crate::logln!("{} is unreachable: {e}", target.url),
                }
                last = Some(reachable);
            }
            crate::sleep_until(started + interval);
        }
    }
}

impl Handler for Probe {
    fn handle(&self, method: &str, path: &str, _body: &[u8]) -> Reply {
        match (method, path.trim_end_matches('/')) {
            ("GET", "/status") => Reply::json(200, &self.status()),
            (_, "/status") => Reply::method_not_allowed("GET, HEAD"),
            _ => Reply::not_found(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(args: &[&str]) -> ProbeConfig {
        match ProbeConfig::from_args(args.iter().copied()).unwrap() {
            Parsed::Run(c) => c,
            Parsed::Help => panic!("help"),
        }
    }

    #[test]
    fn defaults() {
        let c = config(&[]);
        assert_eq!(
            c,
            ProbeConfig {
                urls: vec![],
                listen: Listen::Bind {
                    address: "0.0.0.0".into(),
                    port: 9000,
                },
                interval: Duration::from_secs(5),
                logfile: None,
            }
        );
    }

    #[test]
    fn all_flags_both_spellings() {
        let c = config(&[
            "--urls=http://a:9000/status,,http://b:9000/status,",
            "--http-address",
            "127.0.0.1",
            "--http-port=9100",
            "--http-probe-seconds",
            "2",
            "--logfile=/tmp/x.log",
        ]);
        let urls: Vec<_> = c.urls.iter().map(HttpUrl::as_str).collect();
        assert_eq!(urls, ["http://a:9000/status", "http://b:9000/status"]);
        assert_eq!(
            c.listen,
            Listen::Bind {
                address: "127.0.0.1".into(),
                port: 9100
            }
        );
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(c.logfile, Some(PathBuf::from("/tmp/x.log")));
    }

    #[test]
    fn empty_urls_and_help() {
        assert!(config(&["--urls="]).urls.is_empty());
        assert!(config(&["--urls", ",,"]).urls.is_empty());
        assert_eq!(ProbeConfig::from_args(["--help"]).unwrap(), Parsed::Help);
    }

    #[test]
    fn listen_on_an_inherited_socket() {
        assert_eq!(config(&["--http-listen-fd", "3"]).listen, Listen::Fd(3));
        assert_eq!(
            config(&["--http-port=0"]).listen,
            Listen::Bind {
                address: "0.0.0.0".into(),
                port: 0
            }
        );
    }

    #[test]
    fn bad_flags_are_errors() {
        for args in [
            &["--urls=https://a/"][..],
            &["--urls=http://a/,nonsense"],
            &["--http-port=x"],
            &["--http-probe-seconds=0"],
            &["--bogus=1"],
            &["--http-request-seconds=1"],
            &["--http-listen-fd=3", "--http-port=9000"],
            &["--http-listen-fd=3", "--http-address=127.0.0.1"],
            &["--http-listen-fd=1"],
            &["--http-listen-fd=x"],
        ] {
            assert!(
                ProbeConfig::from_args(args.iter().copied()).is_err(),
                "{args:?}"
            );
        }
    }

    #[test]
    fn status_starts_unreachable_in_order() {
        let probe = Probe::new(vec![
            "http://b:9000/status".parse().unwrap(),
            "http://a:9000/status".parse().unwrap(),
        ]);
        let reply = probe.handle("GET", "/status", b"");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.content_type, "application/json");
        assert_eq!(
            reply.body_json(),
            json!({"status": {"targets": [
                {"url": "http://b:9000/status", "reachable": false},
                {"url": "http://a:9000/status", "reachable": false},
            ]}})
        );
        // Field order as in the original: url, then reachable.
        assert_eq!(
            String::from_utf8(reply.body).unwrap(),
            r#"{"status":{"targets":[{"url":"http://b:9000/status","reachable":false},{"url":"http://a:9000/status","reachable":false}]}}"#
        );
    }

    #[test]
    fn routes() {
        let probe = Probe::new(vec![]);
        assert_eq!(
            probe.handle("GET", "/status", b"").body_json(),
            json!({"status": {"targets": []}})
        );
        assert_eq!(probe.handle("GET", "/", b"").status, 404);
        assert_eq!(probe.handle("GET", "/statusx", b"").status, 404);
        assert_eq!(probe.handle("GET", "/status/x", b"").status, 404);
        assert_eq!(probe.handle("POST", "/status", b"").status, 405);
    }
}
