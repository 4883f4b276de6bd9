//! Load benchmark: N concurrent SMTP sessions × messages of size S into a release build of the
//! relay, delivering to the in-repository emulator, against Postfix's `smtp-sink` as the ceiling
//! of what this machine can do at all. Method and results: BENCHMARKS.md.
//!
//! `cargo bench --bench load` runs the whole matrix; `cargo bench --bench load -- --help` lists
//! the options for a single scenario.

mod generator;
mod process;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use generator::{Load, LoadReport};
use graph_relay_emulator::{Emulator, EmulatorConfig};

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const CLIENT_ID: &str = "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb";
const SECRET: &str = "bench-secret";

/// One measured configuration.
#[derive(Clone, Debug)]
struct Scenario {
    sessions: usize,
    /// Messages per connection before QUIT (1 = a new connection per message).
    per_session: usize,
    total: usize,
    size: usize,
    mailboxes: usize,
    latency_ms: u64,
    per_mailbox_limit: Option<usize>,
}

impl Scenario {
    /// This scenario's load, aimed at `addr`.
    fn load(&self, addr: std::net::SocketAddr) -> Load {
        Load {
            addr,
            sessions: self.sessions,
            per_session: self.per_session,
            total: self.total,
            size: self.size,
            mailboxes: self.mailboxes,
        }
    }

    fn label(&self) -> String {
        let size = if self.size >= 1 << 20 {
            format!("{} MB", self.size >> 20)
        } else {
            format!("{} KB", self.size >> 10)
        };
        let reuse = if self.per_session == 1 {
            "1/conn".to_string()
        } else {
            format!("{}/conn", self.per_session)
        };
        let graph = if self.latency_ms > 0 {
            format!(
                ", Graph {} ms × {} mailboxes",
                self.latency_ms, self.mailboxes
            )
        } else {
            String::new()
        };
        format!("{size} × {} sessions, {reuse}{graph}", self.sessions)
    }
}

fn matrix() -> Vec<Scenario> {
    let base = Scenario {
        sessions: 32,
        per_session: 1,
        total: 20_000,
        size: 10 << 10,
        mailboxes: 1,
        latency_ms: 0,
        per_mailbox_limit: None,
    };
    let mut scenarios = Vec::new();
    for sessions in [1, 8, 32, 100] {
        for per_session in [1, 50] {
            // Runs of several seconds: a sub-second run is mostly ramp-up and noise.
            let total = if sessions == 1 { 3000 } else { 20_000 };
            scenarios.push(Scenario {
                sessions,
                per_session,
                total,
                ..base.clone()
            });
        }
    }
    scenarios.push(Scenario {
        size: 100 << 10,
        total: 5000,
        ..base.clone()
    });
    scenarios.push(Scenario {
        size: 1 << 20,
        total: 500,
        sessions: 8,
        ..base.clone()
    });
    // Graph-limited: 20 mailboxes × 4 concurrent / 0.3 s = 267 messages/s at most.
    scenarios.push(Scenario {
        sessions: 32,
        per_session: 50,
        total: 4000,
        mailboxes: 20,
        latency_ms: 300,
        per_mailbox_limit: Some(4),
        ..base
    });
    scenarios
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "cargo bench --bench load [-- --sessions N --per-session M --total T --size BYTES \
             --mailboxes K --latency-ms L --limit C --runs R]\nWithout options: the full matrix, 3 runs each.\n\
             GRAPH_RELAY_* variables of the environment reach the relay (e.g. GRAPH_RELAY_QUEUE__SYNC=file)."
        );
        return;
    }
    let runs = option(&args, "--runs").unwrap_or(3);
    let scenarios = if args.iter().any(|a| a.starts_with("--") && a != "--runs") {
        let base = matrix()[4].clone();
        vec![Scenario {
            sessions: option(&args, "--sessions").unwrap_or(base.sessions),
            per_session: option(&args, "--per-session").unwrap_or(base.per_session),
            total: option(&args, "--total").unwrap_or(base.total),
            size: option(&args, "--size").unwrap_or(base.size),
            mailboxes: option(&args, "--mailboxes").unwrap_or(1),
            latency_ms: option(&args, "--latency-ms").unwrap_or(0) as u64,
            per_mailbox_limit: option(&args, "--limit"),
        }]
    } else {
        matrix()
    };

    let work = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("load-bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("bench directory");
    println!("machine: {}", machine());
    println!("spool filesystem: {}", filesystem(&work));
    println!("relay: {}", env!("CARGO_BIN_EXE_graph-relay"));
    println!();
    println!(
        "| scenario | acked/s | sink acked/s | ratio | smtp-source → sink/s | ratio to it | delivered/s | p50 ack ms | p99 ack ms | peak RSS MB | relay CPU s/1k msg | emulator CPU s/1k msg | Graph refusals |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let sink = find("smtp-sink");
    let source = find("smtp-source");
    for scenario in scenarios {
        let mut rows: Vec<Run> = Vec::new();
        for run in 0..runs {
            let dir = work.join(format!("run-{run}"));
            let report = run_relay(&scenario, &dir);
            let sink_rates = sink
                .as_deref()
                .map(|sink| run_sink(sink, source.as_deref(), &scenario));
            rows.push((report, sink_rates));
        }
        let median = |f: &dyn Fn(&Run) -> f64| {
            let mut values: Vec<f64> = rows.iter().map(f).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let acked = median(&|r| r.0.acked_per_s);
        let sink_acked = sink
            .as_ref()
            .map(|_| median(&|r| r.1.map_or(0.0, |(generator, _)| generator)));
        let source_acked = source
            .as_ref()
            .filter(|_| sink.is_some())
            .map(|_| median(&|r| r.1.and_then(|(_, source)| source).unwrap_or(0.0)));
        let rate = |rate: Option<f64>| rate.map_or("–".into(), |r| format!("{r:.0}"));
        let ratio = |rate: Option<f64>| rate.map_or("–".into(), |r| format!("{:.2}", acked / r));
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.0} | {:.2} | {:.2} | {:.0} |",
            scenario.label(),
            acked,
            rate(sink_acked),
            ratio(sink_acked),
            rate(source_acked),
            ratio(source_acked),
            median(&|r| r.0.delivered_per_s),
            median(&|r| r.0.p50_ms),
            median(&|r| r.0.p99_ms),
            median(&|r| r.0.peak_rss_mb),
            median(&|r| r.0.relay_cpu_per_1k),
            median(&|r| r.0.emulator_cpu_per_1k),
            median(&|r| r.0.graph_refusals),
        );
    }
    if sink.is_none() {
        println!("\nSKIPPED: the smtp-sink ceiling needs smtp-sink (Debian package postfix)");
    } else if source.is_none() {
        println!("\nSKIPPED: the smtp-source column needs smtp-source (Debian package postfix)");
    }
}

/// One run's figures against the relay, and the same load's rates against smtp-sink: from the
/// bench's generator, and from smtp-source.
type Run = (LoadReport, Option<(f64, Option<f64>)>);

fn option(args: &[String], name: &str) -> Option<usize> {
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1)?.parse().ok()
}

/// One run against the relay: emulator, relay, load; returns the figures.
fn run_relay(scenario: &Scenario, dir: &Path) -> LoadReport {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let emulator_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("emulator")
        .enable_all()
        .build()
        .unwrap();
    let emulator: Emulator = emulator_runtime.block_on(async {
        let mut config = EmulatorConfig::single(TENANT, CLIENT_ID, SECRET);
        config.latency = Duration::from_millis(scenario.latency_ms);
        config.max_concurrent_per_mailbox = scenario.per_mailbox_limit;
        config.record_accepted = false;
        graph_relay_emulator::start(config).await.expect("emulator")
    });
    let mut relay = start_relay(&emulator, dir);
    let smtp = relay.1;
    let load_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let emulator_cpu_before = process::thread_cpu_seconds("emulator");
    let relay_cpu_before = process::cpu_seconds(relay.0.id());
    let started = Instant::now();
    let acks = load_runtime.block_on(scenario.load(smtp).run());
    let acked_at = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    while emulator.stats().accepted < scenario.total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let delivered_at = started.elapsed();
    let stats = emulator.stats();
    let delivered = stats.accepted;
    let relay_cpu = process::cpu_seconds(relay.0.id()) - relay_cpu_before;
    let emulator_cpu = process::thread_cpu_seconds("emulator") - emulator_cpu_before;
    let peak_rss_mb = process::peak_rss_mb(relay.0.id());
    let _ = relay.0.kill();
    let _ = relay.0.wait();
    drop(emulator);
    emulator_runtime.shutdown_timeout(Duration::from_secs(1));
    assert_eq!(
        delivered, scenario.total,
        "not every message was delivered within 10 minutes"
    );
    let mut report = LoadReport::new(
        &acks,
        scenario.total,
        acked_at,
        delivered_at,
        relay_cpu,
        emulator_cpu,
        peak_rss_mb,
    );
    report.graph_refusals = stats.rejected as f64;
    report
}

fn start_relay(emulator: &Emulator, dir: &Path) -> (Child, std::net::SocketAddr) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_graph-relay"))
        .arg("serve")
        .env_clear()
        // Settings to compare (`GRAPH_RELAY_QUEUE__SYNC=file cargo bench --bench load ...`);
        // the ones below, which the benchmark needs, win.
        .envs(std::env::vars().filter(|(name, _)| name.starts_with("GRAPH_RELAY_")))
        // The listener reports its address at info; everything else only when it goes wrong.
        .env("RUST_LOG", "warn,graph_relay::smtp::listener=info")
        .env("GRAPH_RELAY_SMTP__LISTEN", "127.0.0.1:0")
        // Every session of the load comes from 127.0.0.1; the per-client limit guards real
        // networks, not this.
        .env("GRAPH_RELAY_SMTP__MAX_CONNECTIONS_PER_CLIENT", "1000")
        .env("GRAPH_RELAY_HTTP__LISTEN", "127.0.0.1:0")
        .env("GRAPH_RELAY_QUEUE__DIR", dir.join("spool"))
        .env("GRAPH_RELAY_AUTH__TENANT_ID", TENANT)
        .env("GRAPH_RELAY_AUTH__CLIENT_ID", CLIENT_ID)
        .env("GRAPH_RELAY_AUTH__CLIENT_SECRET", SECRET)
        .env("GRAPH_RELAY_AUTH__AUTHORITY_HOST", emulator.url())
        .env("GRAPH_RELAY_GRAPH__ENDPOINT", emulator.graph_endpoint())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("relay starts");
    let stderr = child.stderr.take().unwrap();
    // Read the relay's log on a thread: the address line must come within 30 s, and the pipe is
    // drained afterwards so the relay never blocks on it.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("SMTP listener bound") {
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("address="))
                    .and_then(|a| a.parse().ok());
                let _ = addr_tx.send(addr);
            }
        }
    });
    let addr = match addr_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Some(addr)) => addr,
        _ => {
            let _ = child.kill();
            panic!("the relay did not report its SMTP listener within 30 s");
        }
    };
    (child, addr)
}

/// The same load against `smtp-sink` (accepts and discards; no disk, no parsing), from the
/// bench's generator and then from Postfix's `smtp-source`: messages per second of each.
fn run_sink(sink: &Path, source: Option<&Path>, scenario: &Scenario) -> (f64, Option<f64>) {
    let port = free_port();
    let mut command = Command::new(sink);
    // smtp-sink refuses to run as root unless told which user to become.
    if process::is_root() {
        command.args(["-u", "nobody"]);
    }
    let mut child = command
        .args([format!("127.0.0.1:{port}"), "1024".into()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("smtp-sink starts");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let up = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("smtp-sink exited at start: {status}");
        }
        assert!(
            up.elapsed() < Duration::from_secs(5),
            "smtp-sink did not listen within 5 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    runtime.block_on(scenario.load(addr).run());
    let rate = scenario.total as f64 / started.elapsed().as_secs_f64();
    let source_rate = source.map(|source| run_source(source, scenario, port));
    let _ = child.kill();
    let _ = child.wait();
    (rate, source_rate)
}

/// The same load from `smtp-source`: N sessions, `total` messages of `size` bytes; with more
/// than one message per session (`-d`) each session keeps its connection for all of its share.
fn run_source(source: &Path, scenario: &Scenario, port: u16) -> f64 {
    let mut command = Command::new(source);
    if scenario.per_session > 1 {
        command.arg("-d");
    }
    let started = Instant::now();
    let status = command
        .args(["-s", &scenario.sessions.to_string()])
        .args(["-m", &scenario.total.to_string()])
        .args(["-l", &scenario.size.to_string()])
        .args(["-f", "bench@contoso.com", "-t", "alice@example.com"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("smtp-source runs");
    assert!(status.success(), "smtp-source failed: {status}");
    scenario.total as f64 / started.elapsed().as_secs_f64()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn find(tool: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(tool))
        .find(|path| path.is_file())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

fn filesystem(dir: &Path) -> String {
    Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE,SOURCE,TARGET", "-T"])
        .arg(dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown (findmnt missing)".into())
}
