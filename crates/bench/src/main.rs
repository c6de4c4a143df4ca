//! `netmod-bench` (also `netmod bench …`): measurements against baselines
//! taken in the same run, printed as a table and written to
//! `bench/results/<name>.md`. It drives the `netmod` binary installed beside
//! it, as a cluster manager would; the product binary carries no benchmark.

mod cni;
mod dataplane;
mod etcd;
mod lab;
mod policy;
mod routing;

use netmod_ipam::{AllocRequest, Ipam};
use netmod_model::AllocAttrs;
use netmod_store::SqliteStore;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Parser)]
#[command(
    name = "netmod-bench",
    version,
    about = "netmod's benchmarks, each against a baseline measured in the same run"
)]
pub struct BenchArgs {
    /// Which benchmarks: ipam, dataplane, policy, routing, cni, etcd, lab.
    #[arg(default_values_t = vec!["ipam".to_string()])]
    pub which: Vec<String>,
    /// Directory for the result files.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Process-level calls to time.
    #[arg(long, default_value_t = 500)]
    pub calls: usize,
    /// lab: instances to scale the ipAddress app to.
    #[arg(long, default_value_t = 50)]
    pub lab_scale: u32,
    /// lab: seconds of idle sampling for memory and CPU.
    #[arg(long, default_value_t = 10)]
    pub lab_idle_secs: u64,
    /// policy: timed `netmod mesos isolate` calls per policies × endpoints case.
    #[arg(long, default_value_t = 30)]
    pub policy_isolates: usize,
    /// policy: timed writes of each kind (policy, endpoint) per propagation run.
    #[arg(long, default_value_t = 20)]
    pub policy_rounds: usize,
    /// policy: numbers of `netmod node` processes (fake hosts) for propagation.
    #[arg(long, value_delimiter = ',', default_values_t = vec![10, 100])]
    pub policy_hosts: Vec<usize>,
    /// routing: seconds per iperf3 run (each path runs 2 with the table, 2 without).
    #[arg(long, default_value_t = 5)]
    pub routing_iperf_secs: u32,
    /// routing: numbers of hosts (N-1 running, the N-th joining) for convergence.
    #[arg(long, value_delimiter = ',', default_values_t = vec![10, 100])]
    pub routing_hosts: Vec<usize>,
    /// routing: new hosts (and new endpoints) timed per number of hosts.
    #[arg(long, default_value_t = 10)]
    pub routing_rounds: usize,
    /// Ignored: every benchmark makes stores of its own (accepted because `netmod bench` hands on netmod's global --store).
    #[arg(long, hide = true)]
    pub store: Option<String>,
}

/// An error for a human: one clear sentence, exit status 1.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Store(#[from] netmod_store::StoreError),
    #[error(transparent)]
    Ipam(#[from] netmod_ipam::IpamError),
    #[error(transparent)]
    Core(#[from] netmod_core::CoreError),
    #[error(transparent)]
    Registry(#[from] netmod_core::registry::RegistryError),
    #[error("{0}")]
    Other(String),
}

fn main() {
    let args = <BenchArgs as clap::Parser>::parse();
    if let Err(e) = run(args) {
        eprintln!("netmod-bench: error: {e}");
        std::process::exit(1);
    }
}

/// The `netmod` binary under test: the one installed beside this one.
pub fn netmod_exe() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?.with_file_name("netmod");
    if exe.is_file() {
        Ok(exe)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{} not found (build it with `cargo build -p netmod`)",
                exe.display()
            ),
        ))
    }
}

pub fn run(args: BenchArgs) -> Result<(), BenchError> {
    std::fs::create_dir_all(&args.out)
        .map_err(|e| BenchError::Other(format!("creating {}: {e}", args.out.display())))?;
    for which in &args.which {
        let report = match which.as_str() {
            "ipam" => ipam(&args)?,
            "dataplane" => dataplane::run(&args)?,
            "policy" => policy::run(&args)?,
            "routing" => routing::run(&args)?,
            "cni" => cni::run(&args)?,
            "etcd" => etcd::run(&args)?,
            // The lab writes its own report (it prints as it goes).
            "lab" => {
                lab::run(&lab::BenchArgs {
                    out: args.out.join("lab.md"),
                    scale: args.lab_scale,
                    idle_secs: args.lab_idle_secs,
                })
                .map_err(|e| BenchError::Other(e.to_string()))?;
                continue;
            }
            other => {
                return Err(BenchError::Other(format!(
                    "unknown benchmark {other:?} (known: ipam, dataplane, policy, routing, cni, etcd, lab)"
                )))
            }
        };
        print!("{report}");
        let path = args.out.join(format!("{which}.md"));
        std::fs::write(&path, &report)
            .map_err(|e| BenchError::Other(format!("writing {}: {e}", path.display())))?;
        println!("written to {}", path.display());
    }
    Ok(())
}

/// A row of a result table.
pub struct Row {
    pub what: String,
    pub value: String,
    pub baseline: String,
    pub ratio: String,
}

pub fn render(title: &str, notes: &str, rows: &[Row]) -> String {
    let mut s = format!("# {title}\n\n{}\n\n", machine());
    s += "| measurement | netmod | baseline | ratio |\n|---|---|---|---|\n";
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} |\n",
            r.what, r.value, r.baseline, r.ratio
        );
    }
    s += "\n";
    s += notes;
    s
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "Measured {} on {cores} cores ({cpu}), kernel {}, release build.",
        now_utc(),
        kernel.trim()
    )
}

fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

pub fn bench_dir() -> Result<tempfile_dir::Dir, BenchError> {
    tempfile_dir::Dir::new("netmod-bench").map_err(|e| BenchError::Other(e.to_string()))
}

/// A temporary directory removed on drop (no extra crate for one use).
pub mod tempfile_dir {
    use std::path::{Path, PathBuf};
    pub struct Dir(PathBuf);
    impl Dir {
        pub fn new(prefix: &str) -> std::io::Result<Dir> {
            let p = std::env::temp_dir().join(format!(
                "{prefix}-{}-{}",
                std::process::id(),
                super::nanos()
            ));
            std::fs::create_dir_all(&p)?;
            Ok(Dir(p))
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn attrs(host: &str) -> AllocAttrs {
    AllocAttrs {
        host: host.to_string(),
        ..Default::default()
    }
}

fn allocs_per_sec(db: &Path, threads: usize, per_thread: usize) -> f64 {
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let db = db.to_path_buf();
            std::thread::spawn(move || {
                let store = SqliteStore::open(&db).expect("open bench store");
                let ipam = Ipam::new(&store);
                for i in 0..per_thread {
                    ipam.allocate(&AllocRequest {
                        handle: format!("t{threads}-{t}-{i}"),
                        attrs: attrs(&format!("host-{t}")),
                        num_ipv4: 1,
                        ..Default::default()
                    })
                    .expect("allocate");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("allocator thread");
    }
    (threads * per_thread) as f64 / start.elapsed().as_secs_f64()
}

pub fn time_process(mut cmd: Command, stdin: &[u8]) -> Result<Duration, BenchError> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BenchError::Other(format!("spawning {cmd:?}: {e}")))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(stdin)
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let out = child
        .wait_with_output()
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let took = start.elapsed();
    if !out.status.success() {
        return Err(BenchError::Other(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(took)
}

fn ipam(args: &BenchArgs) -> Result<String, BenchError> {
    let dir = bench_dir()?;
    let db = dir.path().join("bench.db");
    let store = SqliteStore::open(&db)?;
    Ipam::new(&store).add_pool("10.96.0.0/12".parse().expect("cidr"), None, 60)?;
    drop(store);
    let single = allocs_per_sec(&db, 1, 20_000);
    let eight = allocs_per_sec(&db, 8, 2_500);

    // Process level, including process start: netmod mesos allocate. A
    // connection stays open meanwhile, as `netmod node` holds one on every host.
    let _node_connection = SqliteStore::open(&db)?;
    let exe = crate::netmod_exe().map_err(|e| BenchError::Other(e.to_string()))?;
    let mut netmod = Vec::with_capacity(args.calls);
    for i in 0..args.calls {
        let mut cmd = Command::new(&exe);
        cmd.args(["--store", db.to_str().expect("utf-8 path"), "mesos"]);
        let req = format!(
            r#"{{"command":"allocate","args":{{"hostname":"host-{}","num_ipv4":1,"num_ipv6":0,"uid":"proc-{i}"}}}}"#,
            i % 4
        );
        netmod.push(time_process(cmd, req.as_bytes())?);
    }
    netmod.sort();

    // Baselines in the same run: the bare cost of starting a process, and the
    // CNI reference IPAM plugin (host-local) doing the same job the same way.
    let mut floor = Vec::new();
    for _ in 0..args.calls.min(200) {
        floor.push(time_process(Command::new("/bin/true"), b"")?);
    }
    floor.sort();
    let host_local = Path::new("/usr/lib/cni/host-local");
    let mut hl = Vec::new();
    if host_local.exists() {
        let data = dir.path().join("host-local");
        let conf = format!(
            r#"{{"cniVersion":"0.4.0","name":"bench","type":"host-local","ipam":{{"type":"host-local","subnet":"10.112.0.0/16","dataDir":"{}"}}}}"#,
            data.display()
        );
        for i in 0..args.calls {
            let mut cmd = Command::new(host_local);
            cmd.env_clear()
                .env("CNI_COMMAND", "ADD")
                .env("CNI_CONTAINERID", format!("bench-{i}"))
                .env("CNI_NETNS", "/proc/self/ns/net")
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", "/usr/lib/cni");
            hl.push(time_process(cmd, conf.as_bytes())?);
        }
        hl.sort();
    } else if std::env::var_os("CI").is_some() {
        return Err(BenchError::Other(
            "/usr/lib/cni/host-local is missing (apt-get install containernetworking-plugins)"
                .into(),
        ));
    }
    let p50 = percentile(&netmod, 0.5);
    let p99 = percentile(&netmod, 0.99);
    let hl_p50 = percentile(&hl, 0.5);
    let hl_p99 = percentile(&hl, 0.99);
    let ratio = |a: Duration, b: Duration| {
        if b.is_zero() {
            "n/a".to_string()
        } else {
            format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64())
        }
    };
    let rows = vec![
        Row {
            what: "in-process allocations/s, 1 allocator".into(),
            value: format!("{single:.0}/s"),
            baseline: "target 20,000/s".into(),
            ratio: format!("{:.2}x target", single / 20_000.0),
        },
        Row {
            what: "in-process allocations/s, 8 allocators on 8 hosts".into(),
            value: format!("{eight:.0}/s"),
            baseline: format!("1 allocator: {single:.0}/s"),
            ratio: format!("{:.2}x", eight / single),
        },
        Row {
            what: format!(
                "`netmod mesos allocate` p50 ({} calls, incl. process start)",
                args.calls
            ),
            value: ms(p50),
            baseline: format!("host-local ADD p50 {}", ms(hl_p50)),
            ratio: format!("{} (target <= 3 ms)", ratio(p50, hl_p50)),
        },
        Row {
            what: "`netmod mesos allocate` p99".into(),
            value: ms(p99),
            baseline: format!("host-local ADD p99 {}", ms(hl_p99)),
            ratio: ratio(p99, hl_p99),
        },
        Row {
            what: "bare process start (/bin/true) p50".into(),
            value: ms(percentile(&floor, 0.5)),
            baseline: "-".into(),
            ratio: format!("netmod p50 = {} of it", ratio(p50, percentile(&floor, 0.5))),
        },
    ];
    Ok(render(
        "IPAM benchmark",
        "Store: embedded SQLite in WAL mode with `synchronous=NORMAL`. Every commit is in the \
         write-ahead log before it returns, so a killed process (kill -9, crash) never loses or \
         half-writes a committed allocation; only a power cut can lose the last few commits, and \
         never corrupts the file. That is the failure the crash-safety test exercises (200+ kill -9 \
         trials). Baselines: the CNI reference `host-local` IPAM plugin invoked as a process with \
         the same kind of request, and the bare cost of starting a process.\n",
        &rows,
    ))
}
