//! Configuration tests: defaults, environment overrides of every documented key, validation
//! messages, and that `config/graph-relay.toml` documents exactly the keys the code knows.

use std::collections::BTreeSet;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::*;

const DOCUMENTED: &str = include_str!("../../config/graph-relay.toml");

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::load(&Sources {
        file: None,
        env: &env(pairs),
        dry_run: None,
    })
}

/// A PEM file holding one self-signed certificate, for `graph.ca_file`.
fn test_ca_file(dir: &Path) -> PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["test-ca".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let path = dir.join("ca.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    path
}

/// `section.key` for every key the file documents (commented out or set).
fn documented_keys() -> BTreeSet<String> {
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in DOCUMENTED.lines() {
        let line = line.trim();
        // Example named tables are documented commented out: `#[smtp.listeners.submission]`.
        let header = line.trim_start_matches('#');
        if let Some(name) = header.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((key, _)) = line.trim_start_matches('#').split_once(" = ")
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            keys.insert(format!("{section}.{key}"));
        }
    }
    keys
}

/// `section.key` for every field of [`Config`], nested tables as `section.table.key`.
fn code_keys() -> BTreeSet<String> {
    let mut config = Config::default();
    // Named tables, under the example names the file uses.
    config
        .smtp
        .listeners
        .insert("submission".into(), Default::default());
    config
        .smtp
        .sender_policy
        .insert("scanners".into(), Default::default());
    config
        .auth
        .profiles
        .insert("NAME".into(), Default::default());
    config
        .graph
        .user_senders
        .insert("scanner".into(), Default::default());
    let mut keys = BTreeSet::new();
    collect_keys("", &serde_json::to_value(config).unwrap(), &mut keys);
    keys
}

fn collect_keys(prefix: &str, value: &serde_json::Value, keys: &mut BTreeSet<String>) {
    for (name, value) in value.as_object().unwrap() {
        let key = match prefix {
            "" => name.clone(),
            _ => format!("{prefix}.{name}"),
        };
        match value {
            serde_json::Value::Object(_) => collect_keys(&key, value, keys),
            _ => {
                keys.insert(key);
            }
        }
    }
}

#[test]
fn the_example_file_documents_exactly_the_keys_the_code_knows() {
    assert_eq!(documented_keys(), code_keys());
}

#[test]
fn the_example_file_with_every_key_uncommented_is_valid() {
    let uncommented: String = DOCUMENTED
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.contains(" = ") && !rest.starts_with(' ') => rest,
            Some(rest) if rest.starts_with('[') => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "from-file\n").unwrap();
    let path = dir.path().join("graph-relay.toml");
    std::fs::write(
        &path,
        uncommented
            .replace("#client_secret = \"\"", "")
            // One credential at a time: the secret file stays, the certificate and assertion go.
            .replace("\ncertificate_file", "\n#certificate_file")
            .replace("\nprivate_key_file", "\n#private_key_file")
            .replace("\nclient_assertion_file", "\n#client_assertion_file")
            .replace("client_secret = \"\"", "")
            .replace(
                "/etc/graph-relay/client-secret",
                secret_file.to_str().unwrap(),
            )
            .replace(
                "/etc/graph-relay/proxy-ca.pem",
                test_ca_file(dir.path()).to_str().unwrap(),
            ),
    )
    .unwrap();
    let config = Config::load(&Sources {
        file: Some(&path),
        env: &HashMap::new(),
        dry_run: None,
    })
    .unwrap();
    assert_eq!(
        config.auth.credentials().unwrap().credential,
        Credential::Secret {
            value: "from-file".into(),
            file: Some(secret_file),
        }
    );
}

#[test]
fn every_documented_key_can_be_set_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "s3cret-from-file\n").unwrap();
    let secret_path = secret_file.to_str().unwrap();
    let ca_file = test_ca_file(dir.path());
    let ca_path = ca_file.to_str().unwrap();
    type Check = fn(&Config) -> bool;
    // (key, environment value, what the loaded configuration must then hold)
    let table: Vec<(&str, &str, Check)> = vec![
        ("smtp.listen", "127.0.0.1:2626", |c| {
            c.smtp.listen.port() == 2626
        }),
        ("smtp.hostname", "relay.example", |c| {
            c.smtp.hostname == "relay.example"
        }),
        ("smtp.max_message_size", "1000", |c| {
            c.smtp.max_message_size == 1000
        }),
        ("smtp.max_recipients", "50", |c| c.smtp.max_recipients == 50),
        ("smtp.idle_timeout", "45s", |c| {
            c.smtp.idle_timeout == Duration::from_secs(45)
        }),
        ("smtp.data_timeout", "90s", |c| {
            c.smtp.data_timeout == Duration::from_secs(90)
        }),
        ("smtp.allowed_networks", "10.0.0.0/8,::1", |c| {
            c.smtp
                .allowed_networks
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                == ["10.0.0.0/8", "::1/128"]
        }),
        ("smtp.require_auth", "true", |c| c.smtp.require_auth),
        ("smtp.plaintext_auth", "true", |c| c.smtp.plaintext_auth),
        (
            "smtp.allowed_recipient_domains",
            "contoso.com,Fabrikam.com",
            |c| {
                c.smtp
                    .allowed_recipient_domains
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    == ["contoso.com", "fabrikam.com"]
            },
        ),
        ("smtp.max_connections", "200", |c| {
            c.smtp.max_connections == 200
        }),
        ("smtp.max_connections_per_client", "20", |c| {
            c.smtp.max_connections_per_client == 20
        }),
        ("smtp.max_messages_per_connection", "7", |c| {
            c.smtp.max_messages_per_connection == 7
        }),
        ("smtp.max_errors", "9", |c| c.smtp.max_errors == 9),
        ("smtp.tls.cert_file", "/etc/tls/cert.pem", |c| {
            c.smtp.tls.cert_file.as_deref() == Some(Path::new("/etc/tls/cert.pem"))
        }),
        ("smtp.tls.key_file", "/etc/tls/key.pem", |c| {
            c.smtp.tls.key_file.as_deref() == Some(Path::new("/etc/tls/key.pem"))
        }),
        ("smtp.tls.min_version", "1.3", |c| {
            c.smtp.tls.min_version == "1.3"
        }),
        ("smtp.auth.users_file", "/etc/smtp-users", |c| {
            c.smtp.auth.users_file.as_deref() == Some(Path::new("/etc/smtp-users"))
        }),
        ("smtp.auth.max_failures", "3", |c| {
            c.smtp.auth.max_failures == 3
        }),
        ("smtp.auth.lockout", "1h", |c| {
            c.smtp.auth.lockout == Duration::from_secs(3600)
        }),
        ("smtp.listeners.submission.address", "0.0.0.0:587", |c| {
            c.smtp.listeners["submission"].address == Some("0.0.0.0:587".parse().unwrap())
        }),
        ("smtp.listeners.submission.mode", "tls", |c| {
            c.smtp.listeners["submission"].mode == crate::config::ListenerMode::Tls
        }),
        (
            "smtp.listeners.submission.allowed_networks",
            "192.0.2.0/24",
            |c| c.smtp.listeners["submission"].allowed_networks[0].to_string() == "192.0.2.0/24",
        ),
        ("smtp.listeners.submission.require_auth", "true", |c| {
            c.smtp.listeners["submission"].require_auth
        }),
        ("smtp.listeners.submission.plaintext_auth", "true", |c| {
            c.smtp.listeners["submission"].plaintext_auth
        }),
        ("smtp.listeners.submission.sender", "fixed", |c| {
            c.smtp.listeners["submission"].sender == Some(graph::SenderKind::Fixed)
        }),
        (
            "smtp.listeners.submission.fixed_sender",
            "copier@contoso.com",
            |c| {
                c.smtp.listeners["submission"].fixed_sender.as_deref() == Some("copier@contoso.com")
            },
        ),
        (
            "smtp.sender_policy.scanners.clients",
            "10.20.0.0/24,user:scanner",
            |c| c.smtp.sender_policy["scanners"].clients.len() == 2,
        ),
        ("smtp.sender_policy.scanners.allow", "@contoso.com", |c| {
            c.smtp.sender_policy["scanners"].allow[0].to_string() == "@contoso.com"
        }),
        ("smtp.sender_policy.scanners.deny", "ceo@contoso.com", |c| {
            c.smtp.sender_policy["scanners"].deny[0].to_string() == "ceo@contoso.com"
        }),
        ("http.listen", "127.0.0.1:9926", |c| {
            c.http.listen.port() == 9926
        }),
        ("auth.tenant_id", "contoso.onmicrosoft.com", |c| {
            c.auth.tenant_id.as_deref() == Some("contoso.onmicrosoft.com")
        }),
        (
            "auth.client_id",
            "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb",
            |c| c.auth.client_id.as_deref() == Some("aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb"),
        ),
        ("auth.client_secret", "", |_| true), // exclusive with the file; checked below
        ("auth.client_secret_file", secret_path, |c| {
            c.auth
                .client_secret
                .as_ref()
                .is_some_and(|s| s.expose_secret() == "s3cret-from-file")
        }),
        ("auth.authority_host", "http://127.0.0.1:8080", |c| {
            c.auth.authority_host.as_str() == "http://127.0.0.1:8080/"
        }),
        ("auth.scope", "https://graph.microsoft.us/.default", |c| {
            c.auth.scope == "https://graph.microsoft.us/.default"
        }),
        ("auth.client_secret_expires", "2027-01-31", |c| {
            c.auth.client_secret_expires.as_deref() == Some("2027-01-31")
        }),
        ("auth.certificate_file", "/etc/graph-relay/cert.pem", |c| {
            c.auth.certificate_file.as_deref() == Some(Path::new("/etc/graph-relay/cert.pem"))
        }),
        ("auth.private_key_file", "/etc/graph-relay/key.pem", |c| {
            c.auth.private_key_file.as_deref() == Some(Path::new("/etc/graph-relay/key.pem"))
        }),
        ("auth.assertion_algorithm", "RS256", |c| {
            c.auth.assertion_algorithm == AssertionAlgorithm::RS256
        }),
        ("auth.client_assertion_file", "/var/run/token", |c| {
            c.auth.client_assertion_file.as_deref() == Some(Path::new("/var/run/token"))
        }),
        // With a loopback graph.endpoint below, usgov fills in what is left at its default.
        ("auth.cloud", "usgov", |c| c.auth.cloud == Cloud::Usgov),
        ("auth.rbac_only", "true", |c| c.auth.rbac_only),
        ("auth.profiles.NAME.senders", "fabrikam.com", |c| {
            c.auth.profiles["sales"].senders == "fabrikam.com"
        }),
        (
            "auth.profiles.NAME.tenant_id",
            "fabrikam.onmicrosoft.com",
            |c| c.auth.profiles["sales"].tenant_id.as_deref() == Some("fabrikam.onmicrosoft.com"),
        ),
        ("auth.profiles.NAME.client_id", "sales-app", |c| {
            c.auth.profiles["sales"].client_id.as_deref() == Some("sales-app")
        }),
        ("auth.profiles.NAME.client_secret", "", |_| true), // exclusive with the file
        ("auth.profiles.NAME.client_secret_file", secret_path, |c| {
            c.auth.profiles["sales"]
                .client_secret
                .as_ref()
                .is_some_and(|s| s.expose_secret() == "s3cret-from-file")
        }),
        (
            "auth.profiles.NAME.certificate_file",
            "/etc/sales.pem",
            |c| {
                c.auth.profiles["sales"].certificate_file.as_deref()
                    == Some(Path::new("/etc/sales.pem"))
            },
        ),
        (
            "auth.profiles.NAME.private_key_file",
            "/etc/sales.key",
            |c| {
                c.auth.profiles["sales"].private_key_file.as_deref()
                    == Some(Path::new("/etc/sales.key"))
            },
        ),
        ("auth.profiles.NAME.assertion_algorithm", "RS256", |c| {
            c.auth.profiles["sales"].assertion_algorithm == AssertionAlgorithm::RS256
        }),
        (
            "auth.profiles.NAME.client_assertion_file",
            "/var/run/sales-token",
            |c| {
                c.auth.profiles["sales"].client_assertion_file.as_deref()
                    == Some(Path::new("/var/run/sales-token"))
            },
        ),
        ("graph.endpoint", "http://[::1]:8080/v1.0", |c| {
            c.graph.endpoint.as_str() == "http://[::1]:8080/v1.0"
        }),
        ("graph.connect_timeout", "3s", |c| {
            c.graph.connect_timeout == Duration::from_secs(3)
        }),
        ("graph.request_timeout", "1m", |c| {
            c.graph.request_timeout == Duration::from_secs(60)
        }),
        ("graph.proxy", "http://proxy.example:3128", |c| {
            c.graph.proxy.as_ref().map(url::Url::as_str) == Some("http://proxy.example:3128/")
        }),
        ("graph.ca_file", ca_path, |c| c.graph.ca_pem.is_some()),
        ("graph.format", "mime", |c| {
            c.graph.format == crate::convert::Format::Mime
        }),
        // false is refused together with format = "mime"; `fidelity_keys` sets it alone.
        ("graph.save_to_sent_items", "true", |c| {
            c.graph.save_to_sent_items
        }),
        ("graph.sender", "fixed", |c| {
            c.graph.sender == graph::SenderKind::Fixed
        }),
        ("graph.fixed_sender", "scanner@contoso.com", |c| {
            c.graph.fixed_sender == "scanner@contoso.com"
        }),
        ("graph.user_senders.scanner.sender", "fixed", |c| {
            c.graph.user_senders["scanner"].sender == Some(graph::SenderKind::Fixed)
        }),
        (
            "graph.user_senders.scanner.fixed_sender",
            "scanner@contoso.com",
            |c| {
                c.graph.user_senders["scanner"].fixed_sender.as_deref()
                    == Some("scanner@contoso.com")
            },
        ),
        ("graph.x_headers", "X-Legacy-App, x-mailer", |c| {
            c.graph.convert_options("h").x_headers == ["X-Legacy-App", "x-mailer"]
        }),
        ("graph.unparseable", "refuse", |c| {
            c.graph.unparseable == crate::convert::Unparseable::Refuse
        }),
        ("graph.large_messages", "upload", |c| {
            c.graph.large_messages == graph::LargeMessages::Upload
        }),
        ("graph.max_message_size", "104857600", |c| {
            c.graph.max_message_size == 104_857_600
        }),
        ("queue.dir", "/tmp/graph-relay-test-spool", |c| {
            c.queue.dir() == Path::new("/tmp/graph-relay-test-spool")
        }),
        ("queue.concurrency", "16", |c| c.queue.concurrency == 16),
        ("queue.retry_initial", "2s", |c| {
            c.queue.retry_initial == Duration::from_secs(2)
        }),
        ("queue.retry_max", "10m", |c| {
            c.queue.retry_max == Duration::from_secs(600)
        }),
        ("queue.mailbox_concurrency", "2", |c| {
            c.queue.mailbox_concurrency == 2
        }),
        ("queue.max_age", "1h", |c| {
            c.queue.max_age == Duration::from_secs(3600)
        }),
        ("queue.fault_retry", "1m", |c| {
            c.queue.fault_retry == Duration::from_secs(60)
        }),
        ("queue.max_size", "1000000", |c| {
            c.queue.max_size == Some(1_000_000)
        }),
        ("queue.sync", "file", |c| c.queue.sync == SyncMode::File),
        ("queue.shutdown_grace", "10s", |c| {
            c.queue.shutdown_grace == Duration::from_secs(10)
        }),
        ("queue.ack_mode", "hybrid", |c| {
            c.queue.ack_mode == crate::config::AckMode::Hybrid
        }),
        ("queue.ack_wait", "2s", |c| {
            c.queue.ack_wait == Duration::from_secs(2)
        }),
        ("queue.dsn_from", "postmaster@contoso.com", |c| {
            c.queue.dsn_from.as_deref() == Some("postmaster@contoso.com")
        }),
        ("queue.mailbox_messages_per_minute", "30", |c| {
            c.queue.mailbox_messages_per_minute == Some(30)
        }),
        ("queue.mailbox_recipients_per_day", "10000", |c| {
            c.queue.mailbox_recipients_per_day == Some(10_000)
        }),
        ("log.format", "json", |c| c.log.format == LogFormat::Json),
    ];
    let table_keys: BTreeSet<String> = table.iter().map(|(key, ..)| key.to_string()).collect();
    assert_eq!(
        table_keys,
        documented_keys(),
        "the table must cover every documented key"
    );

    let vars: Vec<(String, String)> = table
        .iter()
        .filter(|(key, ..)| !key.ends_with(".client_secret"))
        .map(|(key, value, _)| {
            // Named tables: `auth.profiles.NAME.x` is GRAPH_RELAY_AUTH__PROFILES__SALES__X.
            let path = key.replace("NAME", "sales").replace('.', "__");
            (
                format!("GRAPH_RELAY_{}", path.to_uppercase()),
                value.to_string(),
            )
        })
        .collect();
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let config = load(&pairs).unwrap();
    for (key, value, check) in &table {
        assert!(check(&config), "{key} = {value:?} did not take effect");
    }
    let config = load(&[("GRAPH_RELAY_AUTH__CLIENT_SECRET", "12345")]).unwrap();
    assert_eq!(config.auth.client_secret.unwrap().expose_secret(), "12345");
}

#[test]
fn defaults_follow_the_architecture() {
    let config = load(&[]).unwrap();
    assert_eq!(config.smtp.listen.to_string(), "127.0.0.1:2525");
    assert_eq!(config.http.listen.to_string(), "127.0.0.1:9925");
    assert_eq!(
        config.auth.authority_host.as_str(),
        "https://login.microsoftonline.com/"
    );
    assert_eq!(config.auth.scope, "https://graph.microsoft.com/.default");
    assert_eq!(
        config.graph.endpoint.as_str(),
        "https://graph.microsoft.com/v1.0"
    );
    assert_eq!(config.queue.dir(), Path::new("/var/spool/graph-relay"));
}

#[test]
fn queue_dir_falls_back_to_state_directory_then_dry_run() {
    let config = load(&[("STATE_DIRECTORY", "/var/lib/graph-relay:/other")]).unwrap();
    assert_eq!(config.queue.dir(), Path::new("/var/lib/graph-relay"));
    let config = Config::load(&Sources {
        file: None,
        env: &env(&[("STATE_DIRECTORY", "/var/lib/graph-relay")]),
        dry_run: Some(Path::new("/tmp/out")),
    })
    .unwrap();
    assert_eq!(config.queue.dir(), Path::new("/tmp/out/.queue"));
    let config = Config::load(&Sources {
        file: None,
        env: &env(&[("GRAPH_RELAY_QUEUE__DIR", "/srv/q")]),
        dry_run: Some(Path::new("/tmp/out")),
    })
    .unwrap();
    assert_eq!(config.queue.dir(), Path::new("/srv/q"));
}

#[test]
fn bad_values_name_their_key() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("GRAPH_RELAY_SMTP__LISTEN", "not-an-address")],
            "smtp.listen",
        ),
        (
            &[("GRAPH_RELAY_SMTP__MAX_RECIPIENTS", "501")],
            "smtp.max_recipients",
        ),
        (
            &[("GRAPH_RELAY_SMTP__MAX_MESSAGE_SIZE", "0")],
            "smtp.max_message_size",
        ),
        (
            &[("GRAPH_RELAY_SMTP__IDLE_TIMEOUT", "soon")],
            "smtp.idle_timeout",
        ),
        (
            &[(
                "GRAPH_RELAY_GRAPH__ENDPOINT",
                "http://graph.example.com/v1.0",
            )],
            "graph.endpoint",
        ),
        (
            &[("GRAPH_RELAY_AUTH__AUTHORITY_HOST", "ftp://127.0.0.1")],
            "auth.authority_host",
        ),
        (
            &[(
                "GRAPH_RELAY_AUTH__SCOPE",
                "https://graph.microsoft.com/Mail.Send",
            )],
            "auth.scope",
        ),
        (
            &[("GRAPH_RELAY_AUTH__TENANT_ID", "common")],
            "auth.tenant_id",
        ),
        (&[("GRAPH_RELAY_AUTH__TENANT_ID", "a b")], "auth.tenant_id"),
        (
            &[("GRAPH_RELAY_AUTH__TENANT_ID", "Organizations")],
            "auth.tenant_id",
        ),
        (
            &[("GRAPH_RELAY_AUTH__CLIENT_SECRET_EXPIRES", "31.01.2027")],
            "auth.client_secret_expires",
        ),
        (
            &[("GRAPH_RELAY_AUTH__CERTIFICATE_FILE", "/etc/cert.pem")],
            "auth.private_key_file",
        ),
        (
            &[("GRAPH_RELAY_AUTH__ASSERTION_ALGORITHM", "HS256")],
            "assertion_algorithm",
        ),
        (&[("GRAPH_RELAY_AUTH__CLOUD", "mars")], "cloud"),
        (
            &[("GRAPH_RELAY_AUTH__PROFILES__SALES__TENANT_ID", "t.example")],
            "auth.profiles.sales.senders",
        ),
        (
            &[
                ("GRAPH_RELAY_AUTH__PROFILES__SALES__SENDERS", "fabrikam.com"),
                ("GRAPH_RELAY_AUTH__PROFILES__SALES__TENANT_ID", "common"),
            ],
            "auth.profiles.sales.tenant_id",
        ),
        (
            &[("GRAPH_RELAY_GRAPH__PROXY", "socks5://127.0.0.1:1080")],
            "graph.proxy",
        ),
        (&[("HTTPS_PROXY", "not a url")], "graph.proxy"),
        (
            &[("GRAPH_RELAY_GRAPH__CA_FILE", "/nonexistent/ca.pem")],
            "graph.ca_file",
        ),
        (
            &[("GRAPH_RELAY_GRAPH__CA_FILE", "Cargo.toml")],
            "graph.ca_file",
        ),
        (
            &[
                ("GRAPH_RELAY_AUTH__CLOUD", "usgov"),
                (
                    "GRAPH_RELAY_GRAPH__ENDPOINT",
                    "https://dod-graph.microsoft.us/v1.0",
                ),
            ],
            "graph.endpoint",
        ),
        (
            &[(
                "GRAPH_RELAY_AUTH__CLIENT_SECRET_FILE",
                "/nonexistent/secret",
            )],
            "auth.client_secret_file",
        ),
        (
            &[("GRAPH_RELAY_QUEUE__CONCURRENCY", "0")],
            "queue.concurrency",
        ),
        (&[("GRAPH_RELAY_QUEUE__RETRY_MAX", "1s")], "queue.retry_max"),
        (
            &[("GRAPH_RELAY_QUEUE__MAILBOX_CONCURRENCY", "0")],
            "queue.mailbox_concurrency",
        ),
        (&[("GRAPH_RELAY_QUEUE__MAX_AGE", "1m")], "queue.max_age"),
        (
            &[("GRAPH_RELAY_QUEUE__FAULT_RETRY", "0s")],
            "queue.fault_retry",
        ),
        (&[("GRAPH_RELAY_QUEUE__MAX_SIZE", "0")], "queue.max_size"),
        (&[("GRAPH_RELAY_QUEUE__ACK_WAIT", "0s")], "queue.ack_wait"),
        (
            &[("GRAPH_RELAY_QUEUE__DSN_FROM", "Postmaster <pm@contoso.com>")],
            "queue.dsn_from",
        ),
        (
            &[("GRAPH_RELAY_QUEUE__MAILBOX_MESSAGES_PER_MINUTE", "0")],
            "queue.mailbox_messages_per_minute",
        ),
        (
            &[("GRAPH_RELAY_QUEUE__MAILBOX_RECIPIENTS_PER_DAY", "0")],
            "queue.mailbox_recipients_per_day",
        ),
        (&[("GRAPH_RELAY_SMTP__LISTN", "127.0.0.1:25")], "listn"),
        (
            &[("GRAPH_RELAY_SMTP__TLS__MIN_VERSION", "1.1")],
            "smtp.tls.min_version",
        ),
        (
            &[("GRAPH_RELAY_SMTP__TLS__CERT_FILE", "/etc/cert.pem")],
            "smtp.tls",
        ),
        (
            &[
                ("GRAPH_RELAY_SMTP__LISTENERS__SMTPS__ADDRESS", "0.0.0.0:465"),
                ("GRAPH_RELAY_SMTP__LISTENERS__SMTPS__MODE", "tls"),
            ],
            "smtp.listeners.smtps.mode",
        ),
        (
            &[("GRAPH_RELAY_SMTP__LISTENERS__SMTPS__MODE", "plain")],
            "smtp.listeners.smtps.address",
        ),
        (
            &[("GRAPH_RELAY_SMTP__REQUIRE_AUTH", "true")],
            "smtp.require_auth",
        ),
        (
            &[("GRAPH_RELAY_SMTP__ALLOWED_NETWORKS", "10.0.0.0/33")],
            "smtp.allowed_networks",
        ),
        (
            &[("GRAPH_RELAY_SMTP__ALLOWED_RECIPIENT_DOMAINS", "a@b.com")],
            "smtp.allowed_recipient_domains",
        ),
        (
            &[("GRAPH_RELAY_SMTP__SENDER_POLICY__X__ALLOW", "nobody")],
            "smtp.sender_policy.x.allow",
        ),
        (
            &[("GRAPH_RELAY_SMTP__MAX_CONNECTIONS_PER_CLIENT", "2000")],
            "smtp.max_connections_per_client",
        ),
        (&[("GRAPH_RELAY_SMTP__MAX_ERRORS", "0")], "smtp.max_errors"),
        (
            &[("GRAPH_RELAY_SMTP__SENDER_POLICY__X__ALLOW", "*")],
            "smtp.sender_policy.x.clients",
        ),
        (
            &[("GRAPH_RELAY_SMTP__DATA_TIMEOUT", "0s")],
            "smtp.data_timeout",
        ),
    ];
    for (pairs, key) in cases {
        let err = load(pairs).expect_err(&format!("{pairs:?} must be refused"));
        let text = err.to_string();
        assert!(
            text.contains(key),
            "{pairs:?}: {text:?} does not name {key}"
        );
    }
}

#[test]
fn missing_credentials_are_named() {
    let config = load(&[("GRAPH_RELAY_AUTH__CLIENT_ID", "c")]).unwrap();
    let text = config.auth.credentials().unwrap_err().to_string();
    assert!(
        text.contains("auth.tenant_id") && text.contains("auth.client_secret"),
        "{text}"
    );
    assert!(!text.contains("auth.client_id,"), "{text}");
}

#[test]
fn proxy_comes_from_https_proxy_and_its_password_is_not_printed() {
    let config = load(&[("HTTPS_PROXY", "http://user:pa55word@proxy.example:3128")]).unwrap();
    assert_eq!(
        config.graph.proxy.as_ref().map(url::Url::host_str),
        Some(Some("proxy.example"))
    );
    let printed = config.to_redacted_toml();
    assert!(!printed.contains("pa55word"), "{printed}");
    let config = load(&[
        ("HTTPS_PROXY", "http://ignored.example:1"),
        ("GRAPH_RELAY_GRAPH__PROXY", "http://proxy.example:3128"),
    ])
    .unwrap();
    assert_eq!(
        config.graph.proxy.unwrap().host_str(),
        Some("proxy.example")
    );
}

#[test]
fn each_profile_needs_its_own_complete_credentials() {
    let config = load(&[
        ("GRAPH_RELAY_AUTH__TENANT_ID", "t.example"),
        ("GRAPH_RELAY_AUTH__CLIENT_ID", "c"),
        ("GRAPH_RELAY_AUTH__CLIENT_SECRET", "s"),
        ("GRAPH_RELAY_AUTH__PROFILES__SALES__SENDERS", "fabrikam.com"),
        ("GRAPH_RELAY_AUTH__PROFILES__SALES__CLIENT_ID", "sales-app"),
    ])
    .unwrap();
    let text = config.auth.all_credentials().unwrap_err().to_string();
    assert!(
        text.starts_with("auth.profiles.sales: missing auth.profiles.sales.tenant_id"),
        "{text}"
    );
    let config = load(&[
        ("GRAPH_RELAY_AUTH__PROFILES__SALES__SENDERS", "fabrikam.com"),
        (
            "GRAPH_RELAY_AUTH__PROFILES__SALES__CLIENT_SECRET",
            "Sales~very-secret",
        ),
    ])
    .unwrap();
    let printed = config.to_redacted_toml();
    assert!(!printed.contains("Sales~very-secret"), "{printed}");
    assert!(!format!("{config:?}").contains("Sales~very-secret"));
}

#[test]
fn one_credential_at_a_time() {
    let config = load(&[
        ("GRAPH_RELAY_AUTH__TENANT_ID", "t.example"),
        ("GRAPH_RELAY_AUTH__CLIENT_ID", "c"),
        ("GRAPH_RELAY_AUTH__CLIENT_SECRET", "s"),
        ("GRAPH_RELAY_AUTH__CLIENT_ASSERTION_FILE", "/var/run/token"),
    ])
    .unwrap();
    let text = config.auth.credentials().unwrap_err().to_string();
    assert!(text.contains("set one credential"), "{text}");
}

#[test]
fn the_cloud_fills_in_the_defaults_and_keeps_what_is_set() {
    let config = load(&[("GRAPH_RELAY_AUTH__CLOUD", "china")]).unwrap();
    assert_eq!(
        config.auth.authority_host.as_str(),
        "https://login.partner.microsoftonline.cn/"
    );
    assert_eq!(
        config.auth.scope,
        "https://microsoftgraph.chinacloudapi.cn/.default"
    );
    assert_eq!(
        config.graph.endpoint.as_str(),
        "https://microsoftgraph.chinacloudapi.cn/v1.0"
    );
    let config = load(&[
        ("GRAPH_RELAY_AUTH__CLOUD", "china"),
        (
            "GRAPH_RELAY_AUTH__AUTHORITY_HOST",
            "https://login.chinacloudapi.cn",
        ),
    ])
    .unwrap();
    assert_eq!(
        config.auth.authority_host.as_str(),
        "https://login.chinacloudapi.cn/"
    );
}

#[test]
fn printed_configuration_redacts_the_secret() {
    let config = load(&[
        ("GRAPH_RELAY_AUTH__CLIENT_SECRET", "Xy7~very-secret"),
        ("GRAPH_RELAY_QUEUE__DIR", "relative/spool"),
    ])
    .unwrap();
    let printed = config.to_redacted_toml();
    assert!(!printed.contains("Xy7~very-secret"), "{printed}");
    assert!(
        printed.contains("client_secret = \"<redacted>\""),
        "{printed}"
    );
    let dir = std::env::current_dir().unwrap().join("relative/spool");
    assert!(
        printed.contains(dir.to_str().unwrap()),
        "paths are absolute: {printed}"
    );
    assert!(!format!("{config:?}").contains("Xy7~very-secret"));
}

#[test]
fn wildcard_listen_addresses_are_reached_on_loopback() {
    let cases = [
        ("0.0.0.0:9925", "127.0.0.1:9925"),
        ("[::]:9925", "[::1]:9925"),
        ("127.0.0.2:9925", "127.0.0.2:9925"),
    ];
    for (listen, reached) in cases {
        assert_eq!(connectable(listen.parse().unwrap()).to_string(), reached);
    }
}

#[test]
fn fidelity_keys() {
    let config = load(&[("GRAPH_RELAY_GRAPH__SAVE_TO_SENT_ITEMS", "false")]).unwrap();
    assert!(!config.graph.save_to_sent_items);
    assert!(!config.graph.convert_options("h").save_to_sent_items);

    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
    let refused: &[Case<'_>] = &[
        (
            &[
                ("GRAPH_RELAY_GRAPH__FORMAT", "mime"),
                ("GRAPH_RELAY_GRAPH__SAVE_TO_SENT_ITEMS", "false"),
            ],
            &["graph.save_to_sent_items", "graph.format"],
        ),
        (&[("GRAPH_RELAY_GRAPH__FORMAT", "eml")], &["format"]),
        (
            &[("GRAPH_RELAY_GRAPH__SENDER", "fixed")],
            &["graph.fixed_sender"],
        ),
        (
            &[("GRAPH_RELAY_GRAPH__FIXED_SENDER", "scanner")],
            &["graph.fixed_sender"],
        ),
        (
            &[("GRAPH_RELAY_GRAPH__X_HEADERS", "X-A,X-B,X-C,X-D,X-E,X-F")],
            &["graph.x_headers", "at most 5"],
        ),
        (
            &[("GRAPH_RELAY_GRAPH__X_HEADERS", "List-Unsubscribe")],
            &["graph.x_headers", "List-Unsubscribe"],
        ),
        (
            &[("GRAPH_RELAY_GRAPH__MAX_MESSAGE_SIZE", "157286401")],
            &["graph.max_message_size"],
        ),
        (
            &[("GRAPH_RELAY_GRAPH__LARGE_MESSAGES", "split")],
            &["large_messages"],
        ),
    ];
    for (pairs, needles) in refused {
        let text = load(pairs).expect_err(&format!("{pairs:?}")).to_string();
        for needle in *needles {
            assert!(text.contains(needle), "{pairs:?}: {text:?} lacks {needle}");
        }
    }
}

#[test]
fn size_limit_is_the_smaller_of_smtp_and_the_ladder() {
    const MIB: u64 = 1024 * 1024;
    let config = load(&[]).unwrap();
    // refuse: base64 of 3 MiB is exactly 4 MiB; the relay keeps 64 KiB for its headers.
    assert_eq!(config.graph.size_limit(25 * MIB), 3 * MIB - 64 * 1024);
    assert_eq!(config.graph.size_limit(MIB), MIB);
    let config = load(&[("GRAPH_RELAY_GRAPH__LARGE_MESSAGES", "upload")]).unwrap();
    assert_eq!(config.graph.size_limit(200 * MIB), 35 * MIB);
    assert_eq!(config.graph.size_limit(25 * MIB), 25 * MIB);
    // 40 MB is above the default ceiling: refused at DATA.
    assert!(config.graph.size_limit(200 * MIB) < 40_000_000);
}

#[test]
fn the_sender_setting_is_the_users_then_the_listeners_then_graphs() {
    use crate::convert::SenderMode;
    let fixed = |mailbox: &str| SenderOverride {
        sender: Some(SenderKind::Fixed),
        fixed_sender: Some(mailbox.into()),
    };
    let kind = |sender| SenderOverride {
        sender: Some(sender),
        fixed_sender: None,
    };
    let mut graph = GraphConfig {
        sender: SenderKind::Envelope,
        ..GraphConfig::default()
    };
    graph
        .user_senders
        .insert("copier".into(), fixed("copier@contoso.com"));
    graph
        .user_senders
        .insert("app".into(), kind(SenderKind::Header));
    let unset = SenderOverride::default();
    let cases: &[(&SenderOverride, Option<&str>, SenderMode)] = &[
        (&unset, None, SenderMode::Envelope),
        (&unset, Some("someone"), SenderMode::Envelope),
        (
            &unset,
            Some("copier"),
            SenderMode::Fixed("copier@contoso.com".into()),
        ),
        (
            &fixed("scan@contoso.com"),
            None,
            SenderMode::Fixed("scan@contoso.com".into()),
        ),
        // A user without a setting of its own gets the listener's.
        (
            &fixed("scan@contoso.com"),
            Some("someone"),
            SenderMode::Fixed("scan@contoso.com".into()),
        ),
        (
            &fixed("scan@contoso.com"),
            Some("copier"),
            SenderMode::Fixed("copier@contoso.com".into()),
        ),
        (&fixed("scan@contoso.com"), Some("app"), SenderMode::Header),
        (&kind(SenderKind::Header), None, SenderMode::Header),
    ];
    for (listener, user, expected) in cases {
        assert_eq!(
            &graph.sender_for(listener, *user),
            expected,
            "{listener:?} {user:?}"
        );
    }
}

#[test]
fn sender_overrides_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "").unwrap();
    let users = users.to_str().unwrap();
    let listener = [("GRAPH_RELAY_SMTP__LISTENERS__SCAN__ADDRESS", "127.0.0.1:0")];
    let with = |pairs: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        let mut all = listener.to_vec();
        all.push(("GRAPH_RELAY_SMTP__AUTH__USERS_FILE", users));
        all.extend_from_slice(pairs);
        all
    };
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("GRAPH_RELAY_SMTP__LISTENERS__SCAN__SENDER", "fixed")],
            "smtp.listeners.scan.fixed_sender: must name the mailbox",
        ),
        (
            &[(
                "GRAPH_RELAY_SMTP__LISTENERS__SCAN__FIXED_SENDER",
                "scan@contoso.com",
            )],
            "smtp.listeners.scan.fixed_sender: is used only with smtp.listeners.scan.sender = \"fixed\"",
        ),
        (
            &[
                ("GRAPH_RELAY_SMTP__LISTENERS__SCAN__SENDER", "fixed"),
                ("GRAPH_RELAY_SMTP__LISTENERS__SCAN__FIXED_SENDER", "scanner"),
            ],
            "smtp.listeners.scan.fixed_sender: \"scanner\" is not a mailbox address",
        ),
        (
            &[("GRAPH_RELAY_SMTP__LISTENERS__SCAN__SENDER", "from")],
            "sender",
        ),
        (
            &[("GRAPH_RELAY_GRAPH__USER_SENDERS__COPIER__SENDER", "fixed")],
            "graph.user_senders.copier.fixed_sender: must name the mailbox",
        ),
        (
            &[(
                "GRAPH_RELAY_GRAPH__USER_SENDERS__COPIER__FIXED_SENDER",
                "c@contoso.com",
            )],
            "graph.user_senders.copier.fixed_sender: is used only with",
        ),
    ];
    for (pairs, needle) in cases {
        let text = load(&with(pairs))
            .expect_err(&format!("{pairs:?}"))
            .to_string();
        assert!(
            text.contains(needle),
            "{pairs:?}: {text:?} lacks {needle:?}"
        );
    }
    // A user's setting needs users: only an authenticated client has a user name.
    let text = load(&[("GRAPH_RELAY_GRAPH__USER_SENDERS__COPIER__SENDER", "header")])
        .unwrap_err()
        .to_string();
    assert!(
        text.starts_with("graph.user_senders.copier: needs smtp.auth.users_file"),
        "{text}"
    );
    // Valid ones load, and check-config shows them.
    let config = load(&with(&[
        ("GRAPH_RELAY_SMTP__LISTENERS__SCAN__SENDER", "fixed"),
        (
            "GRAPH_RELAY_SMTP__LISTENERS__SCAN__FIXED_SENDER",
            "scan@contoso.com",
        ),
        (
            "GRAPH_RELAY_GRAPH__USER_SENDERS__COPIER__SENDER",
            "envelope",
        ),
    ]))
    .unwrap();
    let printed = config.to_redacted_toml();
    assert!(
        printed.contains("fixed_sender = \"scan@contoso.com\""),
        "{printed}"
    );
    assert!(printed.contains("[graph.user_senders.copier]"), "{printed}");
}
