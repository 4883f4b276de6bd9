//! The session driven in memory: reply codes per step, pipelining, limits, and what reaches the
//! spool.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedReceiver;

use super::*;
use crate::config::{MAIN_LISTENER, SmtpConfig};
use crate::queue::EntryMeta;
use crate::queue::faulty_fs::FaultyFs;
use crate::queue::scheduler::QueueHandle;
use crate::queue::spool::{FileOps, RealFs};

mod policy;
mod senders;
mod tls;

/// The client's end: a pipe, or TLS over it after STARTTLS.
trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientIo for T {}

struct Harness {
    client: Box<dyn ClientIo>,
    queued: UnboundedReceiver<EntryMeta>,
    spool: Arc<Spool>,
    _dir: tempfile::TempDir,
    /// The relay's shutdown, as the session sees it.
    stop: CancellationToken,
    /// Bytes read but not yet returned as reply lines.
    unread: Vec<u8>,
}

fn config() -> SmtpConfig {
    SmtpConfig {
        hostname: "relay.test".into(),
        max_message_size: 1024 * 1024,
        ..SmtpConfig::default()
    }
}

/// A configuration channel whose value never changes.
fn live(config: Config) -> tokio::sync::watch::Receiver<Arc<Config>> {
    tokio::sync::watch::channel(Arc::new(config)).1
}

/// The whole configuration around `smtp`.
fn with_smtp(smtp: SmtpConfig) -> Config {
    Config {
        smtp,
        ..Config::default()
    }
}

/// A listener's shared context over `spool`, without TLS or users unless `security` has them.
fn context(
    config: Config,
    spool: Arc<Spool>,
    queue: QueueHandle,
    security: Security,
    listener: &str,
) -> Arc<SessionContext> {
    Arc::new(SessionContext {
        config: live(config),
        spool,
        queue,
        listener: listener.to_string(),
        security: tokio::sync::watch::channel(Arc::new(security)).1,
        lockout: Arc::new(Lockout::default()),
    })
}

fn no_security() -> Security {
    Security {
        tls: None,
        users: auth::Users::default(),
    }
}

async fn start(config: SmtpConfig) -> Harness {
    start_with(config, no_security(), "127.0.0.1:40000").await
}

/// A session of `smtp.listen` for a client at `peer`, before its greeting is read.
async fn open(config: SmtpConfig, security: Security, peer: &str) -> Harness {
    open_on(config, security, peer, MAIN_LISTENER).await
}

/// A session of the named listener for a client at `peer`, before its greeting is read.
async fn open_on(config: SmtpConfig, security: Security, peer: &str, listener: &str) -> Harness {
    open_configured(with_smtp(config), security, peer, listener).await
}

/// As [`open_on`], with the spool's file operations `fs`.
async fn open_over(
    config: SmtpConfig,
    security: Security,
    peer: &str,
    listener: &str,
    fs: Arc<dyn FileOps>,
) -> Harness {
    open_configured_over(with_smtp(config), security, peer, listener, fs).await
}

/// Like [`open_on`], with the whole configuration (`[graph]` too).
async fn open_configured(
    config: Config,
    security: Security,
    peer: &str,
    listener: &str,
) -> Harness {
    open_configured_over(config, security, peer, listener, Arc::new(RealFs)).await
}

/// Like [`open_configured`], with the spool's file operations `fs`.
async fn open_configured_over(
    config: Config,
    security: Security,
    peer: &str,
    listener: &str,
    fs: Arc<dyn FileOps>,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open_with(dir.path(), fs).unwrap();
    let spool = Arc::new(spool);
    let (queue, queued) = QueueHandle::channel();
    let ctx = context(config, spool.clone(), queue, security, listener);
    let (client, server) = tokio::io::duplex(256 * 1024);
    let session = Session::new(server, peer.parse().unwrap(), ctx);
    let stop = CancellationToken::new();
    tokio::spawn(session.run(stop.clone()));
    Harness {
        client: Box::new(client),
        queued,
        spool,
        _dir: dir,
        stop,
        unread: Vec::new(),
    }
}

async fn start_with(config: SmtpConfig, security: Security, peer: &str) -> Harness {
    let mut harness = open(config, security, peer).await;
    assert_eq!(
        harness.reply().await,
        "220 relay.test ESMTP graph-relay ready"
    );
    harness
}

impl Harness {
    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.client.write_all(bytes.as_ref()).await.unwrap();
    }

    /// The next complete reply (all lines of a multi-line reply, joined with '\n').
    async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            while let Some(end) = self.unread.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.unread.drain(..end + 2).collect()).unwrap();
                let line = line.trim_end().to_string();
                let last = line.as_bytes().get(3) != Some(&b'-');
                lines.push(line);
                if last {
                    return lines.join("\n");
                }
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), self.client.read(&mut buf))
                .await
                .expect("reply within 5 s")
                .unwrap();
            assert!(n > 0, "session closed; got so far: {lines:?}");
            self.unread.extend_from_slice(&buf[..n]);
        }
    }

    async fn expect(&mut self, command: &str, code: &str) -> String {
        self.send(format!("{command}\r\n")).await;
        let reply = self.reply().await;
        assert!(
            reply.starts_with(code),
            "{command:?} → {reply:?}, expected {code}"
        );
        reply
    }

    /// EHLO, MAIL, RCPTs, DATA, body: returns the final reply.
    async fn transaction(&mut self, from: &str, rcpts: &[&str], body: &str) -> String {
        self.expect(&format!("MAIL FROM:<{from}>"), "250").await;
        for rcpt in rcpts {
            self.expect(&format!("RCPT TO:<{rcpt}>"), "250").await;
        }
        self.expect("DATA", "354").await;
        self.send(body).await;
        self.reply().await
    }

    fn queued_id(reply: &str) -> String {
        reply
            .strip_prefix("250 2.0.0 Queued as ")
            .unwrap_or_else(|| panic!("not a queued reply: {reply:?}"))
            .to_string()
    }

    async fn next_queued(&mut self) -> EntryMeta {
        tokio::time::timeout(Duration::from_secs(5), self.queued.recv())
            .await
            .unwrap()
            .unwrap()
    }
}

#[tokio::test]
async fn a_message_is_spooled_unstuffed_with_its_envelope_before_250() {
    let mut s = start(config()).await;
    let ehlo = s.expect("EHLO client.test", "250").await;
    assert!(
        ehlo.contains("250-PIPELINING") && ehlo.contains("SIZE 1048576"),
        "{ehlo}"
    );
    let reply = s
        .transaction(
            "scanner@example.com",
            &["alice@example.com", "bob@example.com"],
            "Subject: t\r\n\r\n..leading dot\r\nline\r\n.\r\n",
        )
        .await;
    let id = Harness::queued_id(&reply);
    let meta = s.next_queued().await;
    assert_eq!(meta.id.to_string(), id);
    assert_eq!(meta.envelope.mail_from, "scanner@example.com");
    assert_eq!(
        meta.envelope.rcpt_to,
        ["alice@example.com", "bob@example.com"]
    );
    assert_eq!(
        s.spool.read_body(meta.id).unwrap(),
        b"Subject: t\r\n\r\n.leading dot\r\nline\r\n"
    );
}

#[tokio::test]
async fn duplicate_recipients_are_collapsed_case_insensitively() {
    let mut s = start(config()).await;
    s.expect("EHLO c", "250").await;
    s.expect("MAIL FROM:<a@example.com>", "250 2.1.0").await;
    s.expect("RCPT TO:<Bob@Example.com>", "250 2.1.5").await;
    s.expect("RCPT TO:<bob@example.com>", "250 2.1.5").await;
    s.expect("DATA", "354").await;
    s.send("x\r\n.\r\n").await;
    s.reply().await;
    assert_eq!(s.next_queued().await.envelope.rcpt_to, ["Bob@Example.com"]);
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let mut s = start(config()).await;
    s.send(
        "EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<>\r\nDATA\r\n",
    )
    .await;
    assert!(s.reply().await.starts_with("250-relay.test"));
    assert!(s.reply().await.starts_with("250 2.1.0"));
    assert!(s.reply().await.starts_with("250 2.1.5"));
    assert!(s.reply().await.starts_with("553 5.1.3"));
    assert!(s.reply().await.starts_with("354"));
    s.send("body\r\n.\r\nQUIT\r\n").await;
    assert!(s.reply().await.starts_with("250 2.0.0 Queued as "));
    assert_eq!(s.reply().await, "221 2.0.0 Bye");
}

#[tokio::test]
async fn several_messages_on_one_connection_get_their_own_ids() {
    let mut s = start(config()).await;
    s.expect("HELO old-printer", "250").await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let reply = s
            .transaction(
                "p@example.com",
                &["a@example.com"],
                &format!("Subject: {n}\r\n\r\n{n}\r\n.\r\n"),
            )
            .await;
        ids.push(Harness::queued_id(&reply));
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    for n in 0..3 {
        let meta = s.next_queued().await;
        let body = s.spool.read_body(meta.id).unwrap();
        assert_eq!(body, format!("Subject: {n}\r\n\r\n{n}\r\n").as_bytes());
    }
}

#[tokio::test]
async fn commands_out_of_order_get_503() {
    let mut s = start(config()).await;
    s.expect("MAIL FROM:<a@example.com>", "503 5.5.1").await;
    s.expect("EHLO c", "250").await;
    s.expect("RCPT TO:<b@example.com>", "503 5.5.1").await;
    s.expect("DATA", "503 5.5.1").await;
    s.expect("MAIL FROM:<a@example.com>", "250").await;
    s.expect("MAIL FROM:<a@example.com>", "503 5.5.1").await;
    s.expect("DATA", "503 5.5.1").await;
    s.expect("RSET", "250").await;
    s.expect("RCPT TO:<b@example.com>", "503").await;
    s.expect("NOOP", "250").await;
    s.expect("FROBNICATE", "500 5.5.1").await;
    s.expect("STARTTLS", "502 5.5.1").await;
    s.expect("AUTH PLAIN AGJvYgBwdw==", "502 5.5.1").await;
}

#[tokio::test]
async fn oversized_messages_get_552_and_the_session_goes_on() {
    let mut s = start(SmtpConfig {
        max_message_size: 100,
        ..config()
    })
    .await;
    s.expect("EHLO c", "250").await;
    s.expect("MAIL FROM:<a@example.com> SIZE=101", "552 5.3.4")
        .await;
    let reply = s
        .transaction(
            "a@example.com",
            &["b@example.com"],
            &format!("{}\r\n.\r\n", "x".repeat(200)),
        )
        .await;
    assert!(reply.starts_with("552 5.3.4"), "{reply}");
    let reply = s
        .transaction("a@example.com", &["b@example.com"], "small\r\n.\r\n")
        .await;
    Harness::queued_id(&reply);
}

#[tokio::test]
async fn an_empty_message_is_answered() {
    let mut s = start(config()).await;
    s.expect("EHLO c", "250").await;
    let reply = s
        .transaction("a@example.com", &["b@example.com"], ".\r\n")
        .await;
    Harness::queued_id(&reply);
    let meta = s.next_queued().await;
    assert!(s.spool.read_body(meta.id).unwrap().is_empty());
}

#[tokio::test]
async fn only_crlf_dot_crlf_ends_data() {
    let mut s = start(config()).await;
    s.expect("EHLO c", "250").await;
    let body = "a\n.\nMAIL FROM:<x@evil.test>\r\nb\n.\r\nc\r.\r\nend\r\n.\r\n";
    let reply = s
        .transaction("a@example.com", &["b@example.com"], body)
        .await;
    Harness::queued_id(&reply);
    let meta = s.next_queued().await;
    assert_eq!(
        s.spool.read_body(meta.id).unwrap(),
        b"a\r\n.\r\nMAIL FROM:<x@evil.test>\r\nb\r\n.\r\nc\r.\r\nend\r\n",
        "bare LFs are stored as CRLF"
    );
}

#[tokio::test]
async fn smuggled_ends_of_data_stay_content_and_no_second_message_appears() {
    for fake_end in ["\n.\n", "\n.\r\n", "\r.\r\n"] {
        let mut s = start(config()).await;
        s.expect("EHLO c", "250").await;
        let body = format!(
            "Subject: x\r\n\r\nbefore{fake_end}MAIL FROM:<evil@evil.test>\r\n\
             RCPT TO:<victim@example.com>\r\nDATA\r\nsmuggled\r\n.\r\n"
        );
        let reply = s
            .transaction("a@example.com", &["b@example.com"], &body)
            .await;
        Harness::queued_id(&reply);
        s.expect("NOOP", "250 2.0.0").await;
        let meta = s.next_queued().await;
        assert_eq!(meta.envelope.mail_from, "a@example.com", "{fake_end:?}");
        let stored = s.spool.read_body(meta.id).unwrap();
        let stored = String::from_utf8(stored).unwrap();
        assert!(
            stored.contains("MAIL FROM:<evil@evil.test>\r\n") && stored.ends_with("smuggled\r\n"),
            "{fake_end:?}: {stored:?}"
        );
        assert!(
            s.queued.try_recv().is_err(),
            "{fake_end:?}: one message only"
        );
    }
}

#[tokio::test]
async fn bare_lf_ends_command_lines_and_body_lines_are_stored_as_crlf() {
    let mut s = start(config()).await;
    s.send("EHLO c\nMAIL FROM:<a@example.com>\nRCPT TO:<b@example.com>\nDATA\n")
        .await;
    assert!(s.reply().await.starts_with("250-relay.test"));
    assert!(s.reply().await.starts_with("250 2.1.0"));
    assert!(s.reply().await.starts_with("250 2.1.5"));
    assert!(s.reply().await.starts_with("354"));
    // A body split so that a CR ends one write and its LF starts the next.
    s.send("Subject: t\n\nline one\r").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.send("\nline two\r\n.\r\n").await;
    Harness::queued_id(&s.reply().await);
    let meta = s.next_queued().await;
    assert_eq!(
        s.spool.read_body(meta.id).unwrap(),
        b"Subject: t\r\n\r\nline one\r\nline two\r\n"
    );
}

#[tokio::test]
async fn ehlo_advertises_8bitmime_and_smtputf8_and_they_work() {
    let mut s = start(config()).await;
    let ehlo = s.expect("EHLO c", "250").await;
    for extension in ["8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING"] {
        assert!(ehlo.contains(extension), "{ehlo}");
    }
    assert!(
        !ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    s.expect("MAIL FROM:<a@example.com> BODY=8BITMIME", "250")
        .await;
    s.expect("RCPT TO:<jürgen@example.com>", "553 5.6.7").await;
    s.expect("RSET", "250").await;
    s.expect("MAIL FROM:<añil@example.com> BODY=8BITMIME SMTPUTF8", "250")
        .await;
    s.expect("RCPT TO:<jürgen@example.com>", "250 2.1.5").await;
    s.expect("DATA", "354").await;
    s.send("Subject: Grüße\r\n\r\nÄÖÜ\r\n.\r\n").await;
    Harness::queued_id(&s.reply().await);
    let meta = s.next_queued().await;
    assert_eq!(meta.envelope.rcpt_to, ["jürgen@example.com"]);
    assert_eq!(
        s.spool.read_body(meta.id).unwrap(),
        "Subject: Grüße\r\n\r\nÄÖÜ\r\n".as_bytes()
    );
}

#[tokio::test]
async fn over_long_lines_get_500_and_the_session_goes_on() {
    let mut s = start(config()).await;
    s.send(format!("EHLO {}\r\n", "x".repeat(10_000))).await;
    assert!(s.reply().await.starts_with("500 5.5.2"));
    s.expect("EHLO c", "250").await;
}

#[tokio::test]
async fn large_bodies_are_streamed_to_the_spool_intact() {
    let mut s = start(config()).await;
    s.expect("EHLO c", "250").await;
    let line = format!("{}\r\n", "0123456789".repeat(7));
    let body: String = line.repeat(5000);
    let reply = s
        .transaction("a@example.com", &["b@example.com"], &format!("{body}.\r\n"))
        .await;
    Harness::queued_id(&reply);
    let meta = s.next_queued().await;
    assert_eq!(s.spool.read_body(meta.id).unwrap(), body.as_bytes());
}

/// `<CRLF>.<CR>` and its `<LF>` in separate reads (a slow client; found by the fuzzer): the
/// message ends there, whole, also when a buffer flush falls between them.
#[tokio::test]
async fn the_end_of_data_split_after_its_cr_ends_the_message_intact() {
    for filler in [10, BUFFER_SIZE - 3] {
        let mut s = start(config()).await;
        s.expect("EHLO c", "250").await;
        s.expect("MAIL FROM:<a@example.com>", "250").await;
        s.expect("RCPT TO:<b@example.com>", "250").await;
        s.expect("DATA", "354").await;
        let body = format!("{}\r\n", "a".repeat(filler));
        s.send(format!("{body}.\r")).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        s.send("\n").await;
        Harness::queued_id(&s.reply().await);
        let meta = s.next_queued().await;
        assert_eq!(
            s.spool.read_body(meta.id).unwrap(),
            body.as_bytes(),
            "filler {filler}"
        );
    }
}

#[tokio::test]
async fn bdat_chunks_make_one_message() {
    let mut s = start(config()).await;
    s.expect("EHLO c", "250").await;
    s.expect("MAIL FROM:<a@example.com>", "250").await;
    s.expect("RCPT TO:<b@example.com>", "250").await;
    s.send("BDAT 5\r\nhello").await;
    assert_eq!(s.reply().await, "250 2.0.0 5 bytes received");
    s.send("BDAT 6 LAST\r\n world").await;
    Harness::queued_id(&s.reply().await);
    let meta = s.next_queued().await;
    assert_eq!(s.spool.read_body(meta.id).unwrap(), b"hello world");
}

/// A session over a pipe of `capacity` bytes, run by its own task, for tests that watch how the
/// session ends: the client's end, the task, and the spool directory to keep alive.
fn spawn_session(
    capacity: usize,
    stop: CancellationToken,
) -> (
    tokio::io::DuplexStream,
    tokio::task::JoinHandle<std::io::Result<()>>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(dir.path()).unwrap();
    let (queue, _queued) = QueueHandle::channel();
    let ctx = context(
        with_smtp(config()),
        Arc::new(spool),
        queue,
        no_security(),
        MAIN_LISTENER,
    );
    let (client, server) = tokio::io::duplex(capacity);
    let session = Session::new(server, "127.0.0.1:1".parse().unwrap(), ctx);
    (client, tokio::spawn(session.run(stop)), dir)
}

#[tokio::test]
async fn a_full_disk_answers_452_whether_mid_data_or_at_the_end() {
    let mut s = open_over(
        config(),
        no_security(),
        "127.0.0.1:40000",
        MAIN_LISTENER,
        Arc::new(FaultyFs {
            full: true.into(),
            ..FaultyFs::default()
        }),
    )
    .await;
    s.reply().await;
    s.expect("EHLO c", "250").await;
    // Small: the body is first written at the end of DATA. Large: mid-DATA, once the buffer
    // is full, and the rest of the data is read and dropped.
    for size in [10, 3 * BUFFER_SIZE] {
        s.expect("MAIL FROM:<a@example.com>", "250").await;
        s.expect("RCPT TO:<b@example.com>", "250").await;
        s.expect("DATA", "354").await;
        s.send(format!("Subject: x\r\n\r\n{}\r\n.\r\n", "y".repeat(size)))
            .await;
        assert_eq!(s.reply().await, "452 4.3.1 Queue full, try again later");
    }
    s.expect("NOOP", "250").await;
    assert!(s.queued.try_recv().is_err(), "nothing was queued");
}

#[tokio::test]
async fn shutdown_between_transactions_answers_421() {
    let stop = CancellationToken::new();
    let (mut client, task, _dir) = spawn_session(4096, stop.clone());
    stop.cancel();
    task.await.unwrap().unwrap();
    let mut text = String::new();
    client.read_to_string(&mut text).await.unwrap();
    assert!(
        text.ends_with("421 4.3.0 Service shutting down, try again later\r\n"),
        "{text}"
    );
}

#[test]
fn body_bytes_wait_in_memory_only_up_to_the_buffer_size() {
    let read = vec![b'x'; 3 * BUFFER_SIZE];
    let mut bytes = read.iter();
    let mut pending = vec![b'y'; BUFFER_SIZE - 10];
    let done = ingest_bounded(&mut bytes, &mut pending, |bytes, pending| {
        pending.extend(bytes.by_ref());
        false
    });
    assert!(!done);
    assert_eq!(pending.len(), BUFFER_SIZE);
    assert_eq!(
        bytes.as_slice().len(),
        3 * BUFFER_SIZE - 10,
        "the rest waits"
    );
    // A receiver that stops early (end of data) leaves the following command in place.
    let read = b"body\r\n.\r\nQUIT\r\n";
    let mut bytes = read.iter();
    let mut receiver = DataReceiver::new();
    receiver.ingest(&mut b"\r\n".iter(), &mut Vec::new());
    let mut pending = Vec::new();
    assert!(ingest_bounded(
        &mut bytes,
        &mut pending,
        |bytes, pending| { receiver.ingest(bytes, pending) }
    ));
    assert_eq!(bytes.as_slice(), b"QUIT\r\n");
}
