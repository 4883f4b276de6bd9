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

/// `section.key` for every key the file documents (commented out or set).
fn documented_keys() -> BTreeSet<String> {
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in DOCUMENTED.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((key, _)) = line.trim_start_matches('#').split_once(" = ")
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            keys.insert(format!("{section}.{key}"));
        }
    }
    keys
}

/// `section.key` for every field of [`Config`].
fn code_keys() -> BTreeSet<String> {
    let value = serde_json::to_value(Config::default()).unwrap();
    let mut keys = BTreeSet::new();
    for (section, fields) in value.as_object().unwrap() {
        for key in fields.as_object().unwrap().keys() {
            keys.insert(format!("{section}.{key}"));
        }
    }
    keys
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
            .replace("client_secret = \"\"", "")
            .replace(
                "/etc/graph-relay/client-secret",
                secret_file.to_str().unwrap(),
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
        config
            .auth
            .credentials()
            .unwrap()
            .client_secret
            .expose_secret(),
        "from-file"
    );
}

#[test]
fn every_documented_key_can_be_set_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "s3cret-from-file\n").unwrap();
    let secret_path = secret_file.to_str().unwrap();
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
        ("graph.endpoint", "http://[::1]:8080/v1.0", |c| {
            c.graph.endpoint.as_str() == "http://[::1]:8080/v1.0"
        }),
        ("graph.connect_timeout", "3s", |c| {
            c.graph.connect_timeout == Duration::from_secs(3)
        }),
        ("graph.request_timeout", "1m", |c| {
            c.graph.request_timeout == Duration::from_secs(60)
        }),
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
    ];
    let table_keys: BTreeSet<String> = table.iter().map(|(key, ..)| key.to_string()).collect();
    assert_eq!(
        table_keys,
        documented_keys(),
        "the table must cover every documented key"
    );

    let vars: Vec<(String, String)> = table
        .iter()
        .filter(|(key, ..)| *key != "auth.client_secret")
        .map(|(key, value, _)| {
            let (section, name) = key.split_once('.').unwrap();
            (
                format!(
                    "GRAPH_RELAY_{}__{}",
                    section.to_uppercase(),
                    name.to_uppercase()
                ),
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
        (&[("GRAPH_RELAY_SMTP__LISTN", "127.0.0.1:25")], "listn"),
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
