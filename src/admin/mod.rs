//! The administrator's checks, beside the message flow: `test-auth` fetches a token with the
//! configured credentials and reads what it grants; `test-mail` sends one real message through the
//! configured path. Both turn Microsoft's error codes into cause and fix ([`explain`]).

pub mod explain;

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::config::{Config, ConfigError};
use crate::graph::client::{GraphClient, GraphError, http_client};
use crate::graph::token::{TokenError, TokenProvider};

/// Exit status: the token endpoint refused the credentials (or answered nonsense).
pub const EXIT_TOKEN_REFUSED: u8 = 2;
/// Exit status of `test-auth`: the token carries no `Mail.Send` role.
pub const EXIT_NO_ROLE: u8 = 3;
/// Exit status of `test-mail`: Graph refused the message.
pub const EXIT_GRAPH_REFUSED: u8 = 4;
/// Exit status: Entra or Graph could not be reached (network, proxy, TLS).
pub const EXIT_UNREACHABLE: u8 = 1;

/// What a check prints on stdout and how the process exits.
#[derive(Debug)]
pub struct Report {
    pub text: String,
    pub exit: u8,
}

/// The claims `test-auth` reports, read from the token's payload. The signature is Graph's to
/// check; the relay only reads what it was granted.
#[derive(Debug, Default, Deserialize, PartialEq)]
pub struct TokenClaims {
    /// Tenant id.
    #[serde(default)]
    pub tid: Option<String>,
    /// Client id of the app (v1 tokens).
    #[serde(default)]
    pub appid: Option<String>,
    /// Client id of the app (v2 tokens).
    #[serde(default)]
    pub azp: Option<String>,
    /// Expiry, seconds since the epoch.
    #[serde(default)]
    pub exp: Option<u64>,
    /// Application permissions granted with admin consent.
    #[serde(default)]
    pub roles: Vec<String>,
}

impl TokenClaims {
    /// The payload of a JWT access token; `None` when it is not one (Graph tokens may be opaque).
    pub fn decode(token: &str) -> Option<Self> {
        let payload = token.split('.').nth(1)?;
        let json = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
        serde_json::from_slice(&json).ok()
    }

    fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r.eq_ignore_ascii_case(role))
    }
}

fn config_error(err: TokenError) -> anyhow::Error {
    match err {
        TokenError::Credential { key, problem } => ConfigError::new(key, problem).into(),
        other => other.into(),
    }
}

/// The token provider for `config`, every profile included.
///
/// # Errors
/// Missing credentials (a [`ConfigError`]) or no HTTP client.
fn provider(config: &Config) -> anyhow::Result<TokenProvider> {
    Ok(TokenProvider::from_config(
        http_client(&config.graph)?,
        &config.auth,
    )?)
}

/// Explains a failed token request; configuration failures become a [`ConfigError`] (exit 78).
fn token_failure(err: TokenError) -> anyhow::Result<Report> {
    let mut text = String::new();
    match &err {
        TokenError::Refused {
            status,
            error,
            codes,
            description,
            ids,
        } => {
            let codes_text: Vec<String> = codes.iter().map(|c| format!("AADSTS{c}")).collect();
            let _ = writeln!(
                text,
                "token: REFUSED by Entra (HTTP {status}, error {error}, {})",
                codes_text.join(", ")
            );
            let _ = writeln!(text, "  {description}");
            for sentence in explain::token_refusal(error, codes) {
                let _ = writeln!(text, "cause and fix: {sentence}");
            }
            for (name, value) in [
                ("trace id", &ids.trace_id),
                ("correlation id", &ids.correlation_id),
                ("timestamp", &ids.timestamp),
            ] {
                let _ = writeln!(
                    text,
                    "{name}: {}",
                    value.as_deref().unwrap_or("(not given)")
                );
            }
            Ok(Report {
                text,
                exit: EXIT_TOKEN_REFUSED,
            })
        }
        TokenError::InvalidResponse { .. } => {
            let _ = writeln!(
                text,
                "token: FAILED: {err}\ncause and fix: auth.authority_host does not point at Entra's token endpoint (or a proxy answered): check it and auth.cloud."
            );
            Ok(Report {
                text,
                exit: EXIT_TOKEN_REFUSED,
            })
        }
        TokenError::Unreachable { .. } => {
            let _ = writeln!(
                text,
                "token: FAILED: {err}\ncause and fix: check network access to auth.authority_host, graph.proxy or HTTPS_PROXY, and graph.ca_file for TLS-inspecting proxies."
            );
            Ok(Report {
                text,
                exit: EXIT_UNREACHABLE,
            })
        }
        TokenError::Credential { .. } => Err(config_error(err)),
    }
}

/// `graph-relay test-auth`: gets a token and reports tenant, app id, expiry and roles.
///
/// # Errors
/// Configuration problems (exit 78).
pub async fn test_auth(config: &Config) -> anyhow::Result<Report> {
    let provider = provider(config)?;
    let token = match provider.token().await {
        Ok(token) => token,
        Err(err) => return token_failure(err),
    };
    let mut text = String::from("token: OK\n");
    let claims = TokenClaims::decode(token.secret()).unwrap_or_default();
    let show =
        |value: &Option<String>| value.clone().unwrap_or_else(|| "(not in the token)".into());
    let _ = writeln!(text, "tenant: {}", show(&claims.tid));
    let _ = writeln!(
        text,
        "app id: {}",
        show(&claims.appid.clone().or(claims.azp.clone()))
    );
    let expires = claims
        .exp
        .map(|exp| UNIX_EPOCH + Duration::from_secs(exp))
        .unwrap_or_else(|| SystemTime::now() + token.lifetime);
    let _ = writeln!(
        text,
        "expires: {} (lifetime {} s)",
        humantime_serde::re::humantime::format_rfc3339_seconds(expires),
        token.lifetime.as_secs()
    );
    let roles = if claims.roles.is_empty() {
        "(none)".to_string()
    } else {
        claims.roles.join(", ")
    };
    let _ = writeln!(text, "roles: {roles}");
    let upload = config.graph.large_messages == crate::config::LargeMessages::Upload;
    let send = claims.has_role("Mail.Send");
    let read_write = !upload || claims.has_role("Mail.ReadWrite");
    if send {
        let _ = writeln!(text, "Mail.Send: granted.");
    } else {
        let _ = writeln!(
            text,
            "Mail.Send: NOT in the token. Two possible causes:\n  1. admin consent was not granted: API permissions -> Microsoft Graph -> Application permission Mail.Send -> Grant admin consent;\n  2. sending is granted only through Exchange RBAC for Applications (\"Application Mail.Send\" role assignment), whose tokens may carry no role although sending works."
        );
    }
    if upload {
        if read_write {
            let _ = writeln!(
                text,
                "Mail.ReadWrite: granted (graph.large_messages = \"upload\")."
            );
        } else {
            let _ = writeln!(
                text,
                "Mail.ReadWrite: NOT in the token, but graph.large_messages = \"upload\" needs it for drafts and upload sessions: grant the application permission Mail.ReadWrite with admin consent, or the Exchange RBAC role \"Application Mail.ReadWrite\" scoped to the sending mailboxes (such tokens may carry no role)."
            );
        }
    }
    if send && read_write {
        let _ = writeln!(text, "Next: graph-relay test-mail --to ADDR --from MAILBOX");
        return Ok(Report { text, exit: 0 });
    }
    if config.auth.rbac_only {
        let _ = writeln!(
            text,
            "auth.rbac_only = true: treating missing roles as granted through Exchange RBAC for Applications. Confirm with graph-relay test-mail --to ADDR --from MAILBOX"
        );
        Ok(Report { text, exit: 0 })
    } else {
        let _ = writeln!(
            text,
            "If the roles are granted through Exchange RBAC for Applications, set auth.rbac_only = true and confirm with test-mail."
        );
        Ok(Report {
            text,
            exit: EXIT_NO_ROLE,
        })
    }
}

/// The message `test-mail` sends, as raw MIME so it takes the same conversion as relayed mail.
fn test_message(from: &str, to: &str) -> Vec<u8> {
    let date = humantime_serde::re::humantime::format_rfc3339_seconds(SystemTime::now());
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: graph-relay test mail\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThis message was sent by `graph-relay test-mail` at {date} to check the relay's configuration.\r\n"
    )
    .into_bytes()
}

/// `graph-relay test-mail --to ADDR [--from MAILBOX]`: sends one real message, from `--from`,
/// else `graph.fixed_sender`.
///
/// # Errors
/// Configuration problems, no sender among them (exit 78).
pub async fn test_mail(config: &Config, from: Option<&str>, to: &str) -> anyhow::Result<Report> {
    let from = match from {
        Some(from) => from,
        None if !config.graph.fixed_sender.is_empty() => &config.graph.fixed_sender,
        None => {
            return Err(ConfigError::new(
                "--from",
                "no mailbox to send as: give --from MAILBOX or set graph.fixed_sender",
            )
            .into());
        }
    };
    let provider = provider(config)?;
    // The message goes through the same conversion as relayed mail (format, sender mode).
    let arrival = crate::convert::Arrival {
        queue_id: "test-mail",
        received_at: crate::queue::spool::now_ms() as i64 / 1000,
    };
    let options = config.graph.convert_options(&config.smtp.hostname);
    let converted = crate::convert::convert(
        &test_message(from, to),
        from,
        &[to.to_string()],
        arrival,
        &options,
    )
    .map_err(|err| anyhow::anyhow!("cannot build the test message: {err}"))?;
    let (content_type, body) = converted.http_body();
    let client = GraphClient::new(http_client(&config.graph)?, config.graph.endpoint.clone());
    let mut retried = false;
    loop {
        let token = match provider.token_for(&converted.sender).await {
            Ok(token) => token,
            Err(err) => return token_failure(err),
        };
        let mut text = String::new();
        match client
            .send_mail(&token, &converted.sender, content_type, body.clone())
            .await
        {
            Ok(accepted) => {
                let _ = writeln!(
                    text,
                    "sent: Graph accepted the message from {} to {to} (request-id {}, client-request-id {}).\nDelivery continues in Exchange: check the recipient's inbox, and the sender's mailbox for a bounce.",
                    converted.sender,
                    accepted.request_id.as_deref().unwrap_or("(none)"),
                    accepted.client_request_id
                );
                return Ok(Report { text, exit: 0 });
            }
            // One fresh token, as deliveries do.
            Err(GraphError::Refused { status: 401, .. }) if !retried => {
                provider.invalidate_for(&converted.sender).await;
                retried = true;
            }
            Err(GraphError::Refused {
                status,
                code,
                message,
                request_id,
                ..
            }) => {
                let _ = writeln!(
                    text,
                    "send: REFUSED by Graph (HTTP {status}, {code}): {message}\nrequest-id: {}\ncause and fix: {}",
                    request_id.as_deref().unwrap_or("(none)"),
                    explain::graph_refusal(&code, &message, &converted.sender)
                );
                return Ok(Report {
                    text,
                    exit: EXIT_GRAPH_REFUSED,
                });
            }
            Err(err @ GraphError::Unreachable { .. }) => {
                let _ = writeln!(
                    text,
                    "send: FAILED: {err}\ncause and fix: check network access to graph.endpoint, graph.proxy or HTTPS_PROXY, and graph.ca_file."
                );
                return Ok(Report {
                    text,
                    exit: EXIT_UNREACHABLE,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_claims_are_read_from_the_payload() {
        let jwt = |claims: &str| format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims));
        let table = [
            (
                jwt(r#"{"tid":"t","appid":"a","exp":5,"roles":["Mail.Send"]}"#),
                Some(TokenClaims {
                    tid: Some("t".into()),
                    appid: Some("a".into()),
                    azp: None,
                    exp: Some(5),
                    roles: vec!["Mail.Send".into()],
                }),
            ),
            (
                jwt(r#"{"tid":"t","azp":"a"}"#),
                Some(TokenClaims {
                    tid: Some("t".into()),
                    azp: Some("a".into()),
                    ..TokenClaims::default()
                }),
            ),
            ("opaque-token".to_string(), None),
            ("a.!!!.c".to_string(), None),
        ];
        for (token, claims) in table {
            assert_eq!(TokenClaims::decode(&token), claims, "{token}");
        }
        let claims = TokenClaims::decode(&jwt(r#"{"roles":["mail.send"]}"#)).unwrap();
        assert!(claims.has_role("Mail.Send"));
    }

    #[test]
    fn the_test_message_converts_to_one_recipient_from_the_mailbox() {
        let raw = test_message("scanner@contoso.com", "alice@example.com");
        let arrival = crate::convert::Arrival {
            queue_id: "test-mail",
            received_at: 0,
        };
        let converted = crate::convert::convert(
            &raw,
            "scanner@contoso.com",
            &["alice@example.com".to_string()],
            arrival,
            &crate::convert::Options::default(),
        )
        .unwrap();
        assert_eq!(converted.sender, "scanner@contoso.com");
        let (content_type, body) = converted.http_body();
        assert_eq!(content_type, "application/json");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json["message"]["toRecipients"][0]["emailAddress"]["address"],
            "alice@example.com"
        );
    }
}
