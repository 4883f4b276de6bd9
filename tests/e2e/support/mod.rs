//! Test support: the relay as a child process, a raw SMTP client, and the emulator set-up shared
//! by the end-to-end tests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use graph_relay_emulator::{Emulator, EmulatorConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::TcpStream;

pub const TENANT: &str = "11111111-2222-3333-4444-555555555555";
pub const CLIENT_ID: &str = "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb";
pub const SECRET: &str = "Xy7~abc+def/ghi=SECRET-VALUE";
pub const MAILBOX: &str = "scanner@contoso.com";

/// An emulator that knows our app registration and one sending mailbox.
pub async fn emulator() -> Emulator {
    let mut config = EmulatorConfig::single(TENANT, CLIENT_ID, SECRET);
    config.mailboxes = Some(vec![MAILBOX.to_string()]);
    graph_relay_emulator::start(config)
        .await
        .expect("emulator starts")
}

/// Environment pointing the relay at `emulator` with valid credentials.
pub fn graph_env(emulator: &Emulator, queue_dir: &Path) -> Vec<(String, String)> {
    [
        ("GRAPH_RELAY_AUTH__TENANT_ID", TENANT.to_string()),
        ("GRAPH_RELAY_AUTH__CLIENT_ID", CLIENT_ID.to_string()),
        ("GRAPH_RELAY_AUTH__CLIENT_SECRET", SECRET.to_string()),
        ("GRAPH_RELAY_AUTH__AUTHORITY_HOST", emulator.url()),
        ("GRAPH_RELAY_GRAPH__ENDPOINT", emulator.graph_endpoint()),
        ("GRAPH_RELAY_QUEUE__DIR", queue_dir.display().to_string()),
        ("GRAPH_RELAY_QUEUE__RETRY_INITIAL", "1s".to_string()),
        ("GRAPH_RELAY_QUEUE__RETRY_MAX", "2s".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The relay binary running as a child process; killed (SIGKILL) when dropped.
pub struct Relay {
    child: Child,
    pub smtp: SocketAddr,
    /// The operations endpoint (`/metrics`, `/healthz`, `/readyz`).
    pub http: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Relay {
    /// Starts `graph-relay <args>` with exactly `env` (plus an ephemeral SMTP port) and waits
    /// until it reports its listener.
    pub fn start(args: &[&str], env: &[(String, String)]) -> Relay {
        Relay::start_under(&[], args, env)
    }

    /// As [`Relay::start`], run through `wrapper` (e.g. `prlimit --nofile=1024:20000`), which
    /// must exec the relay so that [`Relay::pid`] is the relay's.
    pub fn start_under(wrapper: &[&str], args: &[&str], env: &[(String, String)]) -> Relay {
        let relay = env!("CARGO_BIN_EXE_graph-relay");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(relay);
                command
            }
            None => Command::new(relay),
        };
        let mut child = command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("GRAPH_RELAY_SMTP__LISTEN", "127.0.0.1:0")
            .env("GRAPH_RELAY_HTTP__LISTEN", "127.0.0.1:0")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("relay binary starts");
        let log = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let address = |line: &str| {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix("address="))
                    .and_then(|addr| addr.parse::<SocketAddr>().ok())
            };
            let mut http = None;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // The operations endpoint is bound just before the SMTP listener.
                if line.contains("operations endpoint bound") {
                    http = address(&line);
                }
                if line.contains("SMTP listener bound") {
                    let _ = addr_tx.send(address(&line).zip(http));
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let (smtp, http) = match addr_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(addrs)) => addrs,
            _ => {
                let _ = child.kill();
                panic!(
                    "relay did not report its listener:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        Relay {
            child,
            smtp,
            http,
            log,
        }
    }

    /// Sends a signal with `kill(1)`, e.g. `"HUP"`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// The address a listener reported in the log (`smtp.listen` is reported first; the others
    /// follow within moments).
    pub async fn listener(&self, name: &str) -> SocketAddr {
        let tag = format!("listener={name} ");
        eventually(Duration::from_secs(10), || self.logs().contains(&tag)).await;
        let logs = self.logs();
        logs.lines()
            .filter(|line| line.contains("SMTP listener bound"))
            .find(|line| line.contains(&tag))
            .and_then(|line| {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix("address="))
            })
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no listener {name} in\n{logs}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL: no shutdown, no flushing, as in a crash.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Let the reader thread drain the pipe.
        std::thread::sleep(Duration::from_millis(50));
        self.logs()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the relay binary to completion: (exit code, stdout, stderr).
pub fn run_relay(args: &[&str], env: &[(String, String)]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_graph-relay"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("relay binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A plain SMTP conversation over TCP, one command and reply at a time.
pub struct SmtpClient {
    reader: AsyncBufReader<TcpStream>,
}

impl SmtpClient {
    pub async fn connect(addr: SocketAddr) -> SmtpClient {
        SmtpClient::try_connect(addr).await.expect("relay accepts")
    }

    /// Connects and reads a `220` greeting; any failure is an error (a relay may be down).
    pub async fn try_connect(addr: SocketAddr) -> std::io::Result<SmtpClient> {
        let stream = TcpStream::connect(addr).await?;
        let mut client = SmtpClient {
            reader: AsyncBufReader::new(stream),
        };
        let greeting = client.try_reply().await?;
        if !greeting.starts_with("220 ") {
            return Err(std::io::Error::other(format!("greeting {greeting:?}")));
        }
        Ok(client)
    }

    /// The next reply, multi-line replies joined.
    pub async fn reply(&mut self) -> String {
        self.try_reply().await.expect("a reply")
    }

    /// As [`SmtpClient::reply`]; a closed connection or 10 s of silence is an error.
    pub async fn try_reply(&mut self) -> std::io::Result<String> {
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut line))
                .await
                .map_err(|_| std::io::Error::other("no reply within 10 s"))??;
            if n == 0 {
                return Err(std::io::Error::other(format!(
                    "connection closed after {reply:?}"
                )));
            }
            reply.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(reply.trim_end().to_string());
            }
        }
    }

    pub async fn send(&mut self, text: &str) {
        self.try_send(text).await.unwrap();
    }

    pub async fn try_send(&mut self, text: &str) -> std::io::Result<()> {
        self.reader.get_mut().write_all(text.as_bytes()).await
    }

    /// Sends one command line and checks the reply code.
    pub async fn command(&mut self, line: &str, code: &str) -> String {
        self.send(&format!("{line}\r\n")).await;
        let reply = self.reply().await;
        assert!(reply.starts_with(code), "{line:?} → {reply:?}");
        reply
    }
}

impl SmtpClient {
    /// One transaction after HELO/EHLO: MAIL, RCPTs, DATA and `data` (dot-terminated here).
    /// Returns the queue id from `250 2.0.0 Queued as <id>`.
    pub async fn submit(&mut self, from: &str, rcpts: &[&str], data: &str) -> String {
        self.command(&format!("MAIL FROM:<{from}>"), "250").await;
        for rcpt in rcpts {
            self.command(&format!("RCPT TO:<{rcpt}>"), "250").await;
        }
        self.command("DATA", "354").await;
        self.send(&format!("{data}.\r\n")).await;
        let reply = self.reply().await;
        reply
            .strip_prefix("250 2.0.0 Queued as ")
            .unwrap_or_else(|| panic!("not queued: {reply}"))
            .to_string()
    }
}

/// Polls `condition` every 50 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    condition()
}

/// Deterministic pseudo-random bytes (xorshift), including NUL and high bytes.
pub fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

/// The JSON sendMail bodies the emulator accepted, with the mailbox each was sent as.
pub fn accepted_messages(emulator: &Emulator) -> Vec<(String, serde_json::Value)> {
    emulator
        .accepted()
        .into_iter()
        .map(|mail| match mail.content {
            graph_relay_emulator::MailContent::Json(body) => {
                (mail.mailbox, body["message"].clone())
            }
            graph_relay_emulator::MailContent::Mime(_) => panic!("expected a JSON sendMail"),
        })
        .collect()
}

/// The path of an external tool (PATH, then the sbin directories where Debian puts Postfix's).
pub fn find_tool(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| candidate.is_file())
}

/// Fails the test, with the tool's output, unless it exited successfully.
pub fn assert_succeeded(tool: &str, output: &std::process::Output) {
    assert!(
        output.status.success(),
        "{tool} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A field of /proc/PID/status in kB, e.g. `VmHWM` (peak resident memory).
pub fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// `env` with `pairs` added (later entries win in the child's environment).
pub fn with(mut env: Vec<(String, String)>, pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    env.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// How often each subject reached the emulator.
pub fn arrivals(emulator: &Emulator) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for (_, message) in accepted_messages(emulator) {
        *counts
            .entry(message["subject"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    counts
}

/// `queue stats` (of the running daemon, else of the spool) as (name → value) pairs.
pub fn queue_stats(env: &[(String, String)]) -> std::collections::HashMap<String, u64> {
    let (code, stdout, stderr) = run_relay(&["queue", "stats"], env);
    assert_eq!(code, 0, "queue stats failed: {stderr}");
    stdout
        .lines()
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.trim().to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of an unlabelled Prometheus sample, 0 when absent.
pub fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The value of an unlabelled sample on the relay's `/metrics`, 0 when absent.
pub async fn metric(relay: &Relay, name: &str) -> f64 {
    let metrics = reqwest::get(format!("http://{}/metrics", relay.http))
        .await
        .expect("metrics endpoint answers")
        .text()
        .await
        .expect("metrics body");
    sample(&metrics, name)
}

/// Waits until the relay's `/readyz` says ready (its control socket is then bound too).
pub async fn wait_ready(relay: &Relay) {
    let url = format!("http://{}/readyz", relay.http);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if reqwest::get(&url)
            .await
            .is_ok_and(|response| response.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("relay not ready within 20 s:\n{}", relay.logs());
}
