//! Operations: metrics and health endpoints after real traffic, `graph-relay health`, the
//! sendmail interface, and the systemd unit.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn metrics_and_health_endpoints_report_real_traffic() {
    let emulator = emulator().await;
    let spool = tempfile::tempdir().unwrap();
    let relay = Relay::start(&["serve"], &graph_env(&emulator, spool.path()));

    assert_eq!(get(relay.http, "/healthz").await, (200, "ok\n".to_string()));
    let (status, body) = get(relay.http, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let readiness: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(readiness["ready"], true);
    assert_eq!(readiness["spool_writable"], true);

    let mut smtp = SmtpClient::connect(relay.smtp).await;
    smtp.command("EHLO c", "250").await;
    for n in 0..3 {
        let data = format!("From: {MAILBOX}\r\nSubject: m{n}\r\n\r\nx\r\n");
        smtp.submit(MAILBOX, &["alice@example.com"], &data).await;
    }
    assert!(
        emulator.wait_for_accepted(3, Duration::from_secs(15)).await,
        "{}",
        relay.logs()
    );
    // The counter moves just after the 202; poll briefly.
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = get(relay.http, "/metrics").await.1;
        if sample(&metrics, "graph_relay_messages_delivered_total") == 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sample(&metrics, "graph_relay_messages_delivered_total"),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "graph_relay_messages_received_total"),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "graph_relay_graph_request_duration_seconds_count"),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "graph_relay_token_requests_total{outcome=\"issued\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "graph_relay_upstream_up{profile=\"[auth]\"}"),
        1.0,
        "{metrics}"
    );
    let (_, body) = get(relay.http, "/readyz").await;
    let readiness: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(readiness["upstream"]["[auth]"], "up", "{body}");
}

#[tokio::test]
async fn health_command_probes_the_running_relay() {
    let out = tempfile::tempdir().unwrap();
    let relay = Relay::start(&["serve", "--dry-run", out.path().to_str().unwrap()], &[]);
    let env = [(
        "GRAPH_RELAY_HTTP__LISTEN".to_string(),
        relay.http.to_string(),
    )];
    let (code, stdout, stderr) = run_relay(&["health"], &env);
    assert_eq!((code, stdout.as_str()), (0, "ok\n"), "{stderr}");
    let (code, stdout, stderr) = run_relay(&["health", "--ready"], &env);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"ready\":true"), "{stdout}");
    let http = relay.http;
    relay.kill();
    let (code, _, stderr) = run_relay(
        &["health"],
        &[("GRAPH_RELAY_HTTP__LISTEN".into(), http.to_string())],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&http.to_string()),
        "names the address: {stderr}"
    );
}

fn sendmail(
    program: &std::path::Path,
    args: &[&str],
    env: &[(String, String)],
    stdin: &str,
) -> (i32, String) {
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn sendmail_interface_delivers_and_reports_a_stopped_daemon() {
    let emulator = emulator().await;
    let spool = tempfile::tempdir().unwrap();
    let relay = Relay::start(&["serve"], &graph_env(&emulator, spool.path()));
    let env = vec![(
        "GRAPH_RELAY_SMTP__LISTEN".to_string(),
        relay.smtp.to_string(),
    )];
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_graph-relay"));

    // PHP's mail() style: -t -i, recipients from the headers, Bcc removed, LF line ends.
    let message = format!(
        "From: {MAILBOX}\nTo: Alice <alice@example.com>\nBcc: hidden@example.com\nSubject: cron\n\n.leading dot\nbody\n"
    );
    let (code, stderr) = sendmail(binary, &["sendmail", "-t", "-i"], &env, &message);
    assert_eq!(code, 0, "{stderr}");

    // The same binary invoked as `sendmail`, recipients as arguments, lone dot ends input.
    let link_dir = tempfile::tempdir().unwrap();
    let link = link_dir.path().join("sendmail");
    std::os::unix::fs::symlink(binary, &link).unwrap();
    let message = format!("From: {MAILBOX}\nSubject: as sendmail\n\nbody\n.\nnot sent\n");
    let (code, stderr) = sendmail(&link, &["-f", MAILBOX, "carol@example.com"], &env, &message);
    assert_eq!(code, 0, "{stderr}");

    assert!(
        emulator.wait_for_accepted(2, Duration::from_secs(15)).await,
        "{}",
        relay.logs()
    );
    let accepted = accepted_messages(&emulator);
    let by_subject = |subject: &str| {
        accepted
            .iter()
            .find(|(_, m)| m["subject"] == subject)
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| panic!("no message {subject}: {accepted:?}"))
    };
    let cron = by_subject("cron");
    assert_eq!(
        cron["toRecipients"][0]["emailAddress"]["address"],
        "alice@example.com"
    );
    assert_eq!(
        cron["bccRecipients"][0]["emailAddress"]["address"],
        "hidden@example.com"
    );
    assert_eq!(cron["body"]["content"], ".leading dot\r\nbody\r\n");
    let as_sendmail = by_subject("as sendmail");
    assert_eq!(as_sendmail["body"]["content"], "body\r\n");
    assert_eq!(
        as_sendmail["bccRecipients"][0]["emailAddress"]["address"],
        "carol@example.com"
    );

    let smtp = relay.smtp;
    relay.kill();
    let (code, stderr) = sendmail(
        binary,
        &["sendmail", "x@example.com"],
        &env,
        "Subject: s\n\nx\n",
    );
    assert_eq!(code, 75, "EX_TEMPFAIL when the daemon is down: {stderr}");
    assert!(
        stderr.contains(&smtp.to_string()),
        "names the address it tried: {stderr}"
    );
}

#[test]
fn systemd_unit_passes_verify_and_security_and_can_write_its_spool() {
    let unit = include_str!("../../systemd/graph-relay.service");
    // The unit gives the service a state directory, and the relay uses it as its spool.
    assert!(unit.lines().any(|l| l == "StateDirectory=graph-relay"));
    assert!(unit.lines().any(|l| l == "ProtectSystem=strict"));
    assert!(unit.lines().any(|l| l == "RestartPreventExitStatus=78"));
    let (code, stdout, stderr) = run_relay(
        &["check-config"],
        &[
            ("STATE_DIRECTORY".into(), "/var/lib/graph-relay".into()),
            ("GRAPH_RELAY_AUTH__TENANT_ID".into(), TENANT.into()),
            ("GRAPH_RELAY_AUTH__CLIENT_ID".into(), CLIENT_ID.into()),
            ("GRAPH_RELAY_AUTH__CLIENT_SECRET".into(), SECRET.into()),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("dir = \"/var/lib/graph-relay\""),
        "{stdout}"
    );

    let Some(analyze) = find_tool("systemd-analyze") else {
        println!(
            "SKIPPED: systemd_unit_passes_verify_and_security_and_can_write_its_spool needs systemd-analyze"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("graph-relay.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/graph-relay",
            env!("CARGO_BIN_EXE_graph-relay"),
        ),
    )
    .unwrap();
    let verify = Command::new(&analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&verify.stderr).into_owned()
        + &String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );

    let security = Command::new(&analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| l.split("exposure level for graph-relay.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {report}"));
    assert!(exposure <= 2.0, "exposure {exposure} above 2.0:\n{report}");
}
