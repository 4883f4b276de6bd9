//! The SMTP front door over real sockets with real clients, delivering to the emulator: Python
//! smtplib (STARTTLS, AUTH, SMTPUTF8, 8BITMIME), swaks `--pipeline --tls --auth`, curl over
//! STARTTLS and implicit TLS, Postfix as an upstream relay; connection limits and certificate
//! reload on SIGHUP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use graph_relay_emulator::Emulator;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::support::*;
use super::{accepted_messages, addresses};

const USER: &str = "scanner";
const PASSWORD: &str = "s3cret pass";

/// A relay with `[smtp.tls]` (a fresh self-signed certificate for 127.0.0.1 and localhost), a
/// users file with `USER`, and an extra implicit-TLS listener `smtps`, wired to the emulator.
struct Secure {
    emulator: Emulator,
    dir: tempfile::TempDir,
    relay: Relay,
    cert: CertificateDer<'static>,
}

impl Secure {
    fn cert_file(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    async fn delivered(&self, expected: usize) -> Vec<(String, serde_json::Value)> {
        assert!(
            self.emulator
                .wait_for_accepted(expected, Duration::from_secs(20))
                .await,
            "not delivered; relay log:\n{}",
            self.relay.logs()
        );
        accepted_messages(&self.emulator)
    }
}

/// Writes a new self-signed certificate and key over `dir/cert.pem` and `dir/key.pem`.
fn write_cert(dir: &Path) -> CertificateDer<'static> {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let certified = rcgen::generate_simple_self_signed(names).unwrap();
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    certified.cert.der().clone()
}

async fn secure_relay(extra: &[(&str, &str)]) -> Secure {
    let emulator = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path());
    let users = dir.path().join("users");
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    std::fs::write(&users, format!("{USER}:{hash}\n")).unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let mut env = graph_env(&emulator, &dir.path().join("spool"));
    for (key, value) in [
        ("GRAPH_RELAY_SMTP__TLS__CERT_FILE", path("cert.pem")),
        ("GRAPH_RELAY_SMTP__TLS__KEY_FILE", path("key.pem")),
        ("GRAPH_RELAY_SMTP__AUTH__USERS_FILE", path("users")),
        (
            "GRAPH_RELAY_SMTP__LISTENERS__SMTPS__ADDRESS",
            "127.0.0.1:0".into(),
        ),
        ("GRAPH_RELAY_SMTP__LISTENERS__SMTPS__MODE", "tls".into()),
        (
            "GRAPH_RELAY_SMTP__LISTENERS__SMTPS__REQUIRE_AUTH",
            "true".into(),
        ),
    ] {
        env.push((key.to_string(), value));
    }
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let relay = Relay::start(&["serve"], &env);
    Secure {
        emulator,
        dir,
        relay,
        cert,
    }
}

fn python3() -> bool {
    std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok()
}

#[tokio::test]
async fn python_smtplib_starttls_auth_smtputf8_and_8bitmime_deliver() {
    if !python3() {
        println!(
            "SKIPPED: python_smtplib_starttls_auth_smtputf8_and_8bitmime_deliver needs python3"
        );
        return;
    }
    let secure = secure_relay(&[]).await;
    let script = r#"
import smtplib, ssl, sys
port, cafile, sender, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
    s.ehlo()
    for ext in ("starttls", "smtputf8", "8bitmime", "pipelining", "enhancedstatuscodes"):
        assert s.has_extn(ext), ext
    assert not s.has_extn("auth"), "AUTH must not be offered before TLS"
    s.starttls(context=ssl.create_default_context(cafile=cafile))
    s.ehlo()
    assert s.has_extn("auth") and not s.has_extn("starttls")
    s.login(user, password)
    msg = ("From: Scännér <%s>\r\nTo: alice@example.com\r\nSubject: Grüße aus Köln\r\n"
           "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           "Content-Transfer-Encoding: 8bit\r\n\r\nÄÖÜ – 8bit body\r\n") % sender
    s.sendmail(sender, ["alice@example.com"], msg.encode("utf-8"),
               mail_options=["SMTPUTF8", "BODY=8BITMIME"])
# Wrong password: refused with 535.
with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
    s.starttls(context=ssl.create_default_context(cafile=cafile))
    try:
        s.login(user, "wrong")
        raise SystemExit("wrong password accepted")
    except smtplib.SMTPAuthenticationError as e:
        assert e.smtp_code == 535, e
"#;
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &secure.relay.smtp.port().to_string(),
            secure.cert_file().to_str().unwrap(),
            MAILBOX,
            USER,
            PASSWORD,
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stderr),
        secure.relay.logs()
    );
    let accepted = secure.delivered(1).await;
    let (_, message) = &accepted[0];
    assert_eq!(message["subject"], "Grüße aus Köln");
    assert!(
        message["body"]["content"]
            .as_str()
            .unwrap()
            .contains("ÄÖÜ – 8bit body"),
        "{message}"
    );
    let logs = secure.relay.logs();
    assert!(
        logs.contains("authenticated") && logs.contains("user=scanner"),
        "{logs}"
    );
    assert!(!logs.contains(PASSWORD), "password in logs:\n{logs}");
}

async fn run_tool(test: &str, tool: &str, args: &[String]) -> bool {
    let Some(program) = find_tool(tool) else {
        println!("SKIPPED: {test} needs {tool}");
        return false;
    };
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(program).args(args).output(),
    )
    .await
    .expect("tool finishes within 60 s")
    .unwrap();
    assert_succeeded(tool, &output);
    true
}

#[tokio::test]
async fn swaks_with_pipeline_tls_and_auth_delivers() {
    let secure = secure_relay(&[("GRAPH_RELAY_SMTP__REQUIRE_AUTH", "true")]).await;
    let args: Vec<String> = [
        "--server",
        &secure.relay.smtp.to_string(),
        "--from",
        MAILBOX,
        "--to",
        "alice@example.com",
        "--pipeline",
        "--tls",
        "--auth",
        "LOGIN",
        "--auth-user",
        USER,
        "--auth-password",
        PASSWORD,
        "--header",
        "Subject: swaks over tls",
        "--body",
        "hello",
    ]
    .map(String::from)
    .to_vec();
    if !run_tool("swaks_with_pipeline_tls_and_auth_delivers", "swaks", &args).await {
        return;
    }
    let accepted = secure.delivered(1).await;
    assert_eq!(accepted[0].1["subject"], "swaks over tls");
    assert_eq!(
        addresses(&accepted[0].1, "toRecipients"),
        ["alice@example.com"]
    );
}

#[tokio::test]
async fn curl_delivers_over_starttls_and_implicit_tls_with_auth() {
    let secure = secure_relay(&[]).await;
    let mail = format!("From: {MAILBOX}\r\nTo: alice@example.com\r\nSubject: curl\r\n\r\nhi\r\n");
    let file = secure.dir.path().join("mail.eml");
    std::fs::write(&file, mail).unwrap();
    let smtps = secure.relay.listener("smtps").await;
    for url in [
        format!("smtp://{}", secure.relay.smtp),
        format!("smtps://{smtps}"),
    ] {
        let args: Vec<String> = [
            "--silent",
            "--show-error",
            "--ssl-reqd",
            "--cacert",
            secure.cert_file().to_str().unwrap(),
            "--user",
            &format!("{USER}:{PASSWORD}"),
            "--mail-from",
            MAILBOX,
            "--mail-rcpt",
            "alice@example.com",
            "--upload-file",
            file.to_str().unwrap(),
            &url,
        ]
        .map(String::from)
        .to_vec();
        if !run_tool(
            "curl_delivers_over_starttls_and_implicit_tls_with_auth",
            "curl",
            &args,
        )
        .await
        {
            return;
        }
    }
    assert_eq!(secure.delivered(2).await.len(), 2);
}

/// Reads one reply line.
async fn line(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .expect("a reply within 10 s")
        .unwrap();
    line
}

/// EHLO, STARTTLS, and a handshake that trusts only `cert`: whether the relay presented it.
async fn presents(addr: SocketAddr, cert: &CertificateDer<'static>) -> bool {
    let mut reader = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert!(line(&mut reader).await.starts_with("220 "));
    reader.get_mut().write_all(b"EHLO c\r\n").await.unwrap();
    while line(&mut reader).await.starts_with("250-") {}
    reader.get_mut().write_all(b"STARTTLS\r\n").await.unwrap();
    assert!(line(&mut reader).await.starts_with("220 2.0.0"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(
            ServerName::try_from("localhost").unwrap(),
            reader.into_inner(),
        )
        .await
        .is_ok()
}

#[tokio::test]
async fn sighup_reloads_the_certificate_for_new_connections() {
    let secure = secure_relay(&[]).await;
    let addr = secure.relay.smtp;
    assert!(presents(addr, &secure.cert).await);
    let renewed = write_cert(secure.dir.path());
    assert!(!presents(addr, &renewed).await, "not before the reload");
    secure.relay.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || secure
            .relay
            .logs()
            .contains("SMTP certificate and users reloaded"))
        .await,
        "{}",
        secure.relay.logs()
    );
    assert!(presents(addr, &renewed).await, "{}", secure.relay.logs());
}

#[tokio::test]
async fn connections_beyond_the_per_client_limit_get_421_and_close() {
    let emulator = emulator().await;
    let spool = tempfile::tempdir().unwrap();
    let mut env = graph_env(&emulator, spool.path());
    env.push((
        "GRAPH_RELAY_SMTP__MAX_CONNECTIONS_PER_CLIENT".into(),
        "2".into(),
    ));
    let relay = Relay::start(&["serve"], &env);
    let first = SmtpClient::connect(relay.smtp).await;
    let _second = SmtpClient::connect(relay.smtp).await;
    let mut third = BufReader::new(TcpStream::connect(relay.smtp).await.unwrap());
    assert_eq!(
        line(&mut third).await,
        "421 4.7.0 Too many connections, try again later\r\n"
    );
    assert_eq!(line(&mut third).await, "", "closed after the 421");
    drop(first);
    let mut retry = None;
    for _ in 0..50 {
        let mut reader = BufReader::new(TcpStream::connect(relay.smtp).await.unwrap());
        let greeting = line(&mut reader).await;
        if greeting.starts_with("220 ") {
            retry = Some(greeting);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(retry.is_some(), "a freed slot is usable again");
}

/// A private Postfix instance (its own configuration, queue and log under a temporary
/// directory, no inet listeners) relaying everything to `relayhost`; stopped when dropped.
struct Postfix {
    dir: tempfile::TempDir,
}

impl Postfix {
    fn start(relayhost: SocketAddr) -> Result<Postfix, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = dir.path().display().to_string();
        // Postfix's daemons run as user postfix and must reach the queue.
        let run = |program: &str, args: &[&str]| -> Result<(), String> {
            let output = std::process::Command::new(program)
                .args(args)
                .output()
                .map_err(|e| format!("{program}: {e}"))?;
            if output.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{program} {args:?}: {}",
                    String::from_utf8_lossy(&output.stderr)
                ))
            }
        };
        run("chmod", &["755", &d])?;
        std::fs::create_dir_all(dir.path().join("queue")).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(dir.path().join("data")).map_err(|e| e.to_string())?;
        run("chown", &["postfix", &format!("{d}/data")])?;
        std::fs::copy("/etc/postfix/master.cf", dir.path().join("master.cf"))
            .map_err(|e| format!("/etc/postfix/master.cf: {e}"))?;
        let main = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {d}/queue\n\
             data_directory = {d}/data\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             myhostname = upstream.test\n\
             mydestination =\n\
             inet_interfaces = loopback-only\n\
             inet_protocols = ipv4\n\
             master_service_disable = inet\n\
             relayhost = [{}]:{}\n\
             smtp_tls_security_level = none\n\
             alias_maps =\n\
             alias_database =\n\
             maillog_file = {d}/maillog\n\
             maillog_file_prefixes = {d}\n",
            relayhost.ip(),
            relayhost.port()
        );
        std::fs::write(dir.path().join("main.cf"), main).map_err(|e| e.to_string())?;
        run("/usr/sbin/postfix", &["-c", &d, "start"])?;
        Ok(Postfix { dir })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// Submits a message through Postfix's sendmail, as a local program would.
    fn sendmail(&self, from: &str, to: &str, message: &str) {
        use std::io::Write;
        let mut child = std::process::Command::new("/usr/sbin/sendmail")
            .args(["-C", &self.dir.path().display().to_string(), "-f", from, to])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(message.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = std::process::Command::new("/usr/sbin/postfix")
            .args(["-c", &self.dir.path().display().to_string(), "stop"])
            .output();
    }
}

#[tokio::test]
async fn postfix_as_upstream_relay_delivers_through_graph_relay() {
    let test = "postfix_as_upstream_relay_delivers_through_graph_relay";
    if find_tool("postfix").is_none() || find_tool("sendmail").is_none() {
        println!("SKIPPED: {test} needs postfix");
        return;
    }
    if !rustix::process::geteuid().is_root() {
        println!("SKIPPED: {test} needs root (to run a private Postfix instance)");
        return;
    }
    let emulator = emulator().await;
    let spool = tempfile::tempdir().unwrap();
    let relay = Relay::start(&["serve"], &graph_env(&emulator, spool.path()));
    let postfix = Postfix::start(relay.smtp).unwrap();
    for n in 0..2 {
        postfix.sendmail(
            MAILBOX,
            "alice@example.com",
            &format!(
                "From: {MAILBOX}\nTo: alice@example.com\nSubject: via postfix {n}\n\nbody {n}\n"
            ),
        );
    }
    assert!(
        emulator.wait_for_accepted(2, Duration::from_secs(30)).await,
        "postfix log:\n{}\nrelay log:\n{}",
        postfix.log(),
        relay.logs()
    );
    let mut subjects: Vec<String> = accepted_messages(&emulator)
        .iter()
        .map(|(_, message)| message["subject"].as_str().unwrap().to_string())
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["via postfix 0", "via postfix 1"]);
    // Postfix writes its log through postlogd, a moment after the relay's 250.
    let sent = "status=sent (250 2.0.0 Queued as ";
    assert!(
        eventually(Duration::from_secs(10), || postfix
            .log()
            .matches(sent)
            .count()
            == 2)
        .await,
        "{}",
        postfix.log()
    );
}

#[test]
fn an_unusable_certificate_stops_the_relay_with_78_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "not a certificate\n").unwrap();
    std::fs::write(dir.path().join("key.pem"), "not a key\n").unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let env: Vec<(String, String)> = [
        ("GRAPH_RELAY_SMTP__LISTEN", "127.0.0.1:0".to_string()),
        ("GRAPH_RELAY_SMTP__TLS__CERT_FILE", path("cert.pem")),
        ("GRAPH_RELAY_SMTP__TLS__KEY_FILE", path("key.pem")),
    ]
    .map(|(k, v)| (k.to_string(), v))
    .to_vec();
    let (code, _, stderr) = run_relay(&["serve", "--dry-run", &path("out")], &env);
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("smtp.tls.cert_file"), "{stderr}");
}
