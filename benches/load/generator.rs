//! The load generator: concurrent SMTP sessions with pipelined MAIL/RCPT/DATA, timing each
//! message from the end of its data to the server's `250`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct Load {
    pub addr: SocketAddr,
    pub sessions: usize,
    pub per_session: usize,
    pub total: usize,
    pub size: usize,
    /// Distinct sending mailboxes, used in turn.
    pub mailboxes: usize,
}

pub struct LoadReport {
    pub acked_per_s: f64,
    pub delivered_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub peak_rss_mb: f64,
    pub relay_cpu_per_1k: f64,
    pub emulator_cpu_per_1k: f64,
    /// Requests Graph refused (with no faults injected: 429s from too many in flight).
    pub graph_refusals: f64,
}

impl LoadReport {
    pub fn new(
        acks: &[Duration],
        total: usize,
        acked_at: Duration,
        delivered_at: Duration,
        relay_cpu: f64,
        emulator_cpu: f64,
        peak_rss_mb: f64,
    ) -> Self {
        let mut sorted: Vec<f64> = acks.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        sorted.sort_by(f64::total_cmp);
        let percentile = |p: f64| {
            sorted
                .get(((sorted.len() as f64 * p) as usize).min(sorted.len() - 1))
                .copied()
                .unwrap_or(0.0)
        };
        let per_1k = 1000.0 / total as f64;
        Self {
            acked_per_s: total as f64 / acked_at.as_secs_f64(),
            delivered_per_s: total as f64 / delivered_at.as_secs_f64(),
            p50_ms: percentile(0.50),
            p99_ms: percentile(0.99),
            peak_rss_mb,
            relay_cpu_per_1k: relay_cpu * per_1k,
            emulator_cpu_per_1k: emulator_cpu * per_1k,
            graph_refusals: 0.0,
        }
    }
}

/// A message of about `size` bytes from `mailbox`: headers and 76-character lines.
fn message(mailbox: &str, size: usize, n: usize) -> Vec<u8> {
    let mut text = format!(
        "From: Load <{mailbox}>\r\nTo: sink@example.com\r\nSubject: load {n}\r\nMessage-ID: <load-{n}@bench>\r\n\r\n"
    );
    let line = "The quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrs\r\n";
    while text.len() < size {
        text.push_str(line);
    }
    text.push_str(".\r\n");
    text.into_bytes()
}

fn mailbox(n: usize, mailboxes: usize) -> String {
    format!("sender{}@contoso.com", n % mailboxes.max(1))
}

impl Load {
    /// Runs the load; returns each message's end-of-data-to-250 time.
    pub async fn run(&self) -> Vec<Duration> {
        let next = Arc::new(AtomicUsize::new(0));
        let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
            (0..self.mailboxes.max(1))
                .map(|m| message(&mailbox(m, self.mailboxes), self.size, m))
                .collect(),
        );
        let mut sessions = Vec::new();
        for _ in 0..self.sessions {
            let (next, bodies) = (next.clone(), bodies.clone());
            let (addr, total, per_session, mailboxes) =
                (self.addr, self.total, self.per_session, self.mailboxes);
            sessions.push(tokio::spawn(async move {
                let mut times = Vec::new();
                'connections: loop {
                    let stream = TcpStream::connect(addr).await.expect("connect");
                    stream.set_nodelay(true).ok();
                    let mut conn = BufReader::new(stream);
                    expect(&mut conn, "220").await;
                    conn.get_mut()
                        .write_all(b"EHLO load.bench\r\n")
                        .await
                        .unwrap();
                    expect(&mut conn, "250").await;
                    for _ in 0..per_session {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= total {
                            conn.get_mut().write_all(b"QUIT\r\n").await.ok();
                            break 'connections;
                        }
                        let from = mailbox(n, mailboxes);
                        let envelope =
                            format!("MAIL FROM:<{from}>\r\nRCPT TO:<sink@example.com>\r\nDATA\r\n");
                        conn.get_mut().write_all(envelope.as_bytes()).await.unwrap();
                        expect(&mut conn, "250").await;
                        expect(&mut conn, "250").await;
                        expect(&mut conn, "354").await;
                        conn.get_mut()
                            .write_all(&bodies[n % bodies.len()])
                            .await
                            .unwrap();
                        let sent = Instant::now();
                        expect(&mut conn, "250").await;
                        times.push(sent.elapsed());
                    }
                    conn.get_mut().write_all(b"QUIT\r\n").await.ok();
                }
                times
            }));
        }
        let mut all = Vec::with_capacity(self.total);
        for session in sessions {
            all.extend(session.await.expect("session task"));
        }
        all
    }
}

/// Reads one (possibly multi-line) reply and checks its code.
async fn expect(conn: &mut BufReader<TcpStream>, code: &str) {
    loop {
        let mut line = String::new();
        let n = conn.read_line(&mut line).await.expect("read reply");
        assert!(n > 0, "server closed the connection (expected {code})");
        assert!(line.starts_with(code), "expected {code}, got {line:?}");
        if line.as_bytes().get(3) != Some(&b'-') {
            return;
        }
    }
}
