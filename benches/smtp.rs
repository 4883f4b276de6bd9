//! Criterion benches of the SMTP ingest path: one whole pipelined SMTP transaction of a 10 KB
//! message through the session state machine (in memory, spool on a RAM-backed directory so the
//! figure is the relay's own CPU cost), and the durable spool commit on the target disk.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use graph_relay::config::{Config, SmtpConfig};
use graph_relay::queue::scheduler::QueueHandle;
use graph_relay::queue::spool::{Envelope, Spool};
use graph_relay::smtp::auth::Lockout;
use graph_relay::smtp::{Security, Session, SessionContext};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

fn message_10k() -> String {
    let line = "The quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrs\r\n";
    format!(
        "From: scanner@example.com\r\nTo: alice@example.com\r\nSubject: scan\r\n\r\n{}",
        line.repeat(10 * 1024 / line.len())
    )
}

/// A RAM-backed directory when there is one, so the bench measures CPU rather than the disk.
fn ram_dir() -> tempfile::TempDir {
    match std::path::Path::new("/dev/shm") {
        shm if shm.is_dir() => tempfile::tempdir_in(shm).unwrap(),
        _ => tempfile::tempdir().unwrap(),
    }
}

fn session_transaction(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = ram_dir();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let (queue, queued) = QueueHandle::channel();
    // Entries are removed after each batch so the RAM-backed spool stays small.
    let queued = Arc::new(std::sync::Mutex::new(queued));
    let config = Config {
        smtp: SmtpConfig {
            max_message_size: 1 << 20,
            // criterion sends all of a sample's iterations over one connection.
            max_messages_per_connection: usize::MAX,
            ..SmtpConfig::default()
        },
        ..Config::default()
    };
    let security = Security::load(&config.smtp).unwrap();
    let ctx = Arc::new(SessionContext {
        config: tokio::sync::watch::channel(Arc::new(config)).1,
        spool: Arc::new(spool),
        queue,
        listener: "listen".into(),
        security: tokio::sync::watch::channel(Arc::new(security)).1,
        lockout: Arc::new(Lockout::default()),
    });
    let transaction = format!(
        "MAIL FROM:<scanner@example.com>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n{}.\r\n",
        message_10k()
    );
    let spool = ctx.spool.clone();
    let mut group = c.benchmark_group("smtp");
    group.throughput(Throughput::Bytes(transaction.len() as u64));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("transaction_10k", |b| {
        b.to_async(&runtime).iter_custom(|iterations| {
            let (ctx, spool) = (ctx.clone(), spool.clone());
            let transaction = transaction.clone();
            let queued = queued.clone();
            async move {
                let (mut client, server) = tokio::io::duplex(64 * 1024);
                let session = Session::new(server, "127.0.0.1:1".parse().unwrap(), ctx);
                let task = tokio::spawn(session.run(CancellationToken::new()));
                let mut reply = vec![0u8; 4096];
                let _ = client.read(&mut reply).await.unwrap();
                client.write_all(b"EHLO bench\r\n").await.unwrap();
                let _ = client.read(&mut reply).await.unwrap();
                let start = std::time::Instant::now();
                for _ in 0..iterations {
                    client.write_all(transaction.as_bytes()).await.unwrap();
                    // MAIL, RCPT, 354 and the final 250 may arrive in one or several reads.
                    let mut seen = 0;
                    while seen < 4 {
                        let n = client.read(&mut reply).await.unwrap();
                        assert!(n > 0, "the session closed the connection");
                        seen += reply[..n].iter().filter(|&&b| b == b'\n').count();
                    }
                }
                let elapsed = start.elapsed();
                client.write_all(b"QUIT\r\n").await.unwrap();
                let _ = task.await;
                let mut queued = queued.lock().unwrap();
                while let Ok(meta) = queued.try_recv() {
                    let _ = spool.remove(black_box(meta.id));
                }
                elapsed
            }
        });
    });
    group.finish();
}

fn spool_commit(c: &mut Criterion) {
    // The target directory is on the disk the spool would use; fsync cost is the point here.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let body = message_10k();
    let envelope = Envelope {
        mail_from: "scanner@example.com".into(),
        rcpt_to: vec!["alice@example.com".into()],
        client: "127.0.0.1:1".into(),
        received_at_ms: 0,
        origin: None,
    };
    let mut group = c.benchmark_group("spool");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(20);
    group.bench_function("commit_10k_fsync", |b| {
        b.iter(|| {
            let mut incoming = spool.receive();
            spool.append(&mut incoming, body.as_bytes()).unwrap();
            let meta = spool.commit(incoming, envelope.clone()).unwrap();
            spool.remove(black_box(meta.id)).unwrap();
        });
    });
    // What 32 sessions ending their DATA together cost: commits and removals through the
    // writer thread, sharing flushes (per message, as elements).
    let spool = Arc::new(spool);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    group.throughput(Throughput::Elements(32));
    group.bench_function("commit_10k_x32_together", |b| {
        b.to_async(&runtime).iter(|| {
            let commits: Vec<_> = (0..32)
                .map(|_| {
                    let (spool, body, envelope) = (spool.clone(), body.clone(), envelope.clone());
                    tokio::spawn(async move {
                        let incoming = spool.receive();
                        let meta = spool
                            .commit_async(incoming, body.into_bytes(), envelope)
                            .await
                            .unwrap();
                        spool.remove_async(black_box(meta.id)).await.unwrap();
                    })
                })
                .collect();
            async move {
                for commit in commits {
                    commit.await.unwrap();
                }
            }
        });
    });
    group.finish();
}

criterion_group!(benches, session_transaction, spool_commit);
criterion_main!(benches);
