//! The SMTP session fuzz harness, shared by the cargo-fuzz target and the corpus replay test
//! (`tests/fuzz_corpus.rs`). Fuzzes one SMTP session: arbitrary client bytes, split into arbitrary writes, must get only
//! well-formed replies (three digits, CRLF) and never a panic or a hang. AUTH is enabled without
//! TLS so the SASL states are reached too.

use std::sync::{Arc, OnceLock};

use graph_relay::config::{Config, MAIN_LISTENER, SmtpConfig};
use graph_relay::queue::Spool;
use graph_relay::queue::scheduler::QueueHandle;
use graph_relay::smtp::auth::{Lockout, Users};
use graph_relay::smtp::{Security, Session, SessionContext};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// One spool for all runs: creating a directory per input would dominate the time.
fn spool() -> Arc<Spool> {
    static SPOOL: OnceLock<(tempfile::TempDir, Arc<Spool>)> = OnceLock::new();
    SPOOL
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let (spool, _) = Spool::open(dir.path()).unwrap();
            (dir, Arc::new(spool))
        })
        .1
        .clone()
}

/// One fuzz input: the first byte sets the write size, the rest is what the client sends.
pub fn run(input: &[u8]) {
    // The first byte sets the size of each write, so replies interleave with partial lines.
    let Some((&chunk, data)) = input.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let config = Config {
        smtp: SmtpConfig {
            max_message_size: 4096,
            plaintext_auth: true,
            ..SmtpConfig::default()
        },
        ..Config::default()
    };
    let (queue, _queued) = QueueHandle::channel();
    let ctx = Arc::new(SessionContext {
        config: tokio::sync::watch::channel(Arc::new(config)).1,
        spool: spool(),
        queue,
        listener: MAIN_LISTENER.to_string(),
        security: tokio::sync::watch::channel(Arc::new(Security {
            tls: None,
            // A well-formed cost-4 bcrypt hash (of no known password): AUTH is offered and
            // every attempt fails cheaply.
            users: Users::parse("u:$2b$04$y3BmjJ8tZ6.yGSsEnyBSUuGKjgoShGN2aGUTsm3jWHqK4GlP1aGTm")
                .unwrap(),
        }))
        .1,
        lockout: Arc::new(Lockout::default()),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let session = Session::new(server, "127.0.0.1:1".parse().unwrap(), ctx);
        let task = tokio::spawn(session.run(CancellationToken::new()));
        let (mut reader, mut writer) = tokio::io::split(client);
        // Reads while writing, so a client that pipelines a lot never blocks the session.
        let write = async {
            for piece in data.chunks(chunk) {
                if writer.write_all(piece).await.is_err() {
                    break;
                }
            }
            let _ = writer.shutdown().await;
        };
        let read = async {
            let mut out = Vec::new();
            let _ = reader.read_to_end(&mut out).await;
            out
        };
        let ((), out) = tokio::join!(write, read);
        let _ = task.await.expect("the session does not panic");
        for line in out.split_inclusive(|&b| b == b'\n') {
            assert!(line.ends_with(b"\r\n"), "{line:?}");
            assert!(
                line.len() >= 5 && line[..3].iter().all(u8::is_ascii_digit),
                "{line:?}"
            );
        }
    });
}
