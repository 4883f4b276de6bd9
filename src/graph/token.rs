//! App-only access tokens from Entra's v2.0 token endpoint (OAuth 2.0 client credentials), cached
//! per authentication profile: fetched once however many deliveries ask at the same time,
//! refreshed ahead of expiry, dropped when Graph answers 401.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::ClientCredentials;

/// Cache key of the only profile so far (named profiles are a later addition).
const DEFAULT_PROFILE: &str = "default";
/// Upper bound of the early-refresh margin.
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// A bearer token and how long the cache keeps it.
pub struct AccessToken {
    value: SecretString,
    /// Lifetime announced by Entra (`expires_in`).
    pub lifetime: Duration,
}

impl AccessToken {
    pub fn secret(&self) -> &str {
        self.value.expose_secret()
    }

    /// How long to use the token before fetching the next: its lifetime less a margin of the
    /// smaller of five minutes and a tenth of it (lifetimes vary from 60 to 90 minutes).
    pub fn refresh_after(&self) -> Duration {
        let margin = (self.lifetime / 10).min(MAX_REFRESH_MARGIN);
        self.lifetime.saturating_sub(margin)
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// Entra answered with an OAuth error: the configuration is wrong, or Entra is failing.
    #[error(
        "Entra refused the token request (HTTP {status}, {error}{}): {description}{}",
        codes_suffix(codes),
        ids_suffix(trace_id, correlation_id)
    )]
    Refused {
        status: u16,
        error: String,
        codes: Vec<u64>,
        /// First line of `error_description` (the rest repeats the ids below).
        description: String,
        trace_id: Option<String>,
        correlation_id: Option<String>,
    },
    #[error("token endpoint {url} could not be reached: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("token endpoint {url} answered HTTP {status} with an unexpected body")]
    InvalidResponse { url: String, status: u16 },
}

fn codes_suffix(codes: &[u64]) -> String {
    codes.iter().map(|code| format!(", AADSTS{code}")).collect()
}

fn ids_suffix(trace_id: &Option<String>, correlation_id: &Option<String>) -> String {
    match (trace_id, correlation_id) {
        (Some(trace), Some(correlation)) => {
            format!(" (trace id {trace}, correlation id {correlation})")
        }
        _ => String::new(),
    }
}

impl TokenError {
    /// Entra outages and network failures pass; refusals of the credentials do not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Refused { status, .. } | Self::InvalidResponse { status, .. } => {
                *status >= 500 || *status == 429
            }
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    token_type: String,
    expires_in: u64,
    access_token: String,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u64>,
    trace_id: Option<String>,
    correlation_id: Option<String>,
}

/// Fetches and caches tokens for one app registration.
pub struct TokenProvider {
    http: reqwest::Client,
    token_url: url::Url,
    client_id: String,
    client_secret: SecretString,
    scope: String,
    cache: Cache<&'static str, Arc<AccessToken>>,
}

struct RefreshAhead;

impl moka::Expiry<&'static str, Arc<AccessToken>> for RefreshAhead {
    fn expire_after_create(
        &self,
        _key: &&'static str,
        token: &Arc<AccessToken>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(token.refresh_after())
    }
}

impl TokenProvider {
    pub fn new(
        http: reqwest::Client,
        authority_host: &url::Url,
        credentials: ClientCredentials,
        scope: String,
    ) -> Self {
        let mut token_url = authority_host.clone();
        if let Ok(mut segments) = token_url.path_segments_mut() {
            segments.pop_if_empty().extend([
                credentials.tenant_id.as_str(),
                "oauth2",
                "v2.0",
                "token",
            ]);
        }
        Self {
            http,
            token_url,
            client_id: credentials.client_id,
            client_secret: credentials.client_secret,
            scope,
            cache: Cache::builder()
                .max_capacity(16)
                .expire_after(RefreshAhead)
                .build(),
        }
    }

    /// A valid token, from the cache or freshly fetched (one fetch for all concurrent callers).
    ///
    /// # Errors
    /// The token endpoint refused or could not be reached.
    pub async fn token(&self) -> Result<Arc<AccessToken>, TokenError> {
        self.cache
            .try_get_with(DEFAULT_PROFILE, self.fetch())
            .await
            .map_err(|err| (*err).clone())
    }

    /// Drops the cached token, after Graph refused it.
    pub async fn invalidate(&self) {
        self.cache.invalidate(DEFAULT_PROFILE).await;
    }

    async fn fetch(&self) -> Result<Arc<AccessToken>, TokenError> {
        let url = self.token_url.as_str();
        let unreachable = |err: reqwest::Error| TokenError::Unreachable {
            url: url.to_string(),
            reason: error_chain(&err),
        };
        let form = [
            ("client_id", self.client_id.as_str()),
            ("scope", self.scope.as_str()),
            ("client_secret", self.client_secret.expose_secret()),
            ("grant_type", "client_credentials"),
        ];
        let response = self
            .http
            .post(self.token_url.clone())
            .header("client-request-id", uuid::Uuid::new_v4().to_string())
            .form(&form)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(unreachable)?;
        let invalid = || TokenError::InvalidResponse {
            url: url.to_string(),
            status,
        };
        if status == 200 {
            let token: TokenResponse = serde_json::from_slice(&body).map_err(|_| invalid())?;
            if !token.token_type.eq_ignore_ascii_case("bearer") || token.expires_in == 0 {
                return Err(invalid());
            }
            tracing::info!(lifetime_s = token.expires_in, "fetched access token");
            return Ok(Arc::new(AccessToken {
                value: SecretString::from(token.access_token),
                lifetime: Duration::from_secs(token.expires_in),
            }));
        }
        let refusal: ErrorResponse = serde_json::from_slice(&body).map_err(|_| invalid())?;
        Err(TokenError::Refused {
            status,
            error: refusal.error,
            codes: refusal.error_codes,
            description: refusal
                .error_description
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
            trace_id: refusal.trace_id,
            correlation_id: refusal.correlation_id,
        })
    }
}

/// The error and its causes on one line (reqwest's own message omits the cause).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_ahead_of_expiry_by_a_margin_that_scales() {
        // (lifetime, refresh after), in milliseconds.
        let cases = [
            (3_599_000, 3_299_000),
            (5_400_000, 5_100_000),
            (600_000, 540_000),
            (6_000, 5_400),
        ];
        for (lifetime, refresh) in cases {
            let token = AccessToken {
                value: SecretString::from("t"),
                lifetime: Duration::from_millis(lifetime),
            };
            let expected = Duration::from_millis(refresh);
            assert_eq!(token.refresh_after(), expected, "lifetime {lifetime}");
        }
    }

    #[test]
    fn token_url_is_tenant_specific_v2() {
        let provider = TokenProvider::new(
            reqwest::Client::new(),
            &url::Url::parse("http://127.0.0.1:9/").unwrap(),
            ClientCredentials {
                tenant_id: "contoso.onmicrosoft.com".into(),
                client_id: "c".into(),
                client_secret: SecretString::from("s"),
            },
            "https://graph.microsoft.com/.default".into(),
        );
        assert_eq!(
            provider.token_url.as_str(),
            "http://127.0.0.1:9/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
    }

    #[test]
    fn only_outages_are_retryable() {
        let refused = |status| TokenError::Refused {
            status,
            error: "invalid_client".into(),
            codes: vec![7000215],
            description: "AADSTS7000215: Invalid client secret provided.".into(),
            trace_id: Some("t".into()),
            correlation_id: Some("c".into()),
        };
        assert!(!refused(401).is_retryable());
        assert!(!refused(400).is_retryable());
        assert!(refused(503).is_retryable());
        assert!(
            TokenError::Unreachable {
                url: "u".into(),
                reason: "r".into()
            }
            .is_retryable()
        );
        let text = refused(401).to_string();
        assert!(
            text.contains("AADSTS7000215") && text.contains("trace id t"),
            "{text}"
        );
    }
}
