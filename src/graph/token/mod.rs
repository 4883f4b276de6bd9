//! App-only access tokens from Entra's v2.0 token endpoint (OAuth 2.0 client credentials), cached
//! per authentication profile: fetched once however many deliveries ask at the same time,
//! refreshed ahead of expiry, dropped when Graph answers 401.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use moka::future::Cache;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use tokio::sync::watch;

use crate::config::{
    AuthConfig, ClientCredentials, Config, ConfigError, Credential, read_secret_file,
    select_profile,
};
use crate::telemetry::{SECRET_EXPIRY, TOKEN_REQUESTS};

pub mod assertion;

use assertion::Certificate;

/// How often credential files are compared with what was last read.
const CREDENTIAL_POLL: Duration = Duration::from_secs(5);
/// Warn this many days before `auth.client_secret_expires`.
const SECRET_EXPIRY_WARNING_DAYS: i64 = 30;

fn days_since_epoch() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    (secs / 86_400) as i64
}

/// `client_assertion_type` of a JWT client assertion (RFC 7523).
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Cache key of the default profile (`[auth]`); profile names cannot contain brackets.
pub const DEFAULT_PROFILE: &str = "[auth]";
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
        ids_suffix(ids)
    )]
    Refused {
        status: u16,
        error: String,
        codes: Vec<u64>,
        /// First line of `error_description` (the rest repeats the ids below).
        description: String,
        /// Boxed: keeps every `Result<_, TokenError>` small.
        ids: Box<EntraIds>,
    },
    #[error("token endpoint {url} could not be reached: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("token endpoint {url} answered HTTP {status} with an unexpected body")]
    InvalidResponse { url: String, status: u16 },
    /// The credential could not be read or used: a configuration problem, `key: what is wrong`.
    #[error("{key}: {problem}")]
    Credential { key: String, problem: String },
}

fn codes_suffix(codes: &[u64]) -> String {
    codes.iter().map(|code| format!(", AADSTS{code}")).collect()
}

/// What Microsoft support asks for about a refused token request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntraIds {
    pub trace_id: Option<String>,
    pub correlation_id: Option<String>,
    pub timestamp: Option<String>,
}

fn ids_suffix(ids: &EntraIds) -> String {
    match (&ids.trace_id, &ids.correlation_id) {
        (Some(trace), Some(correlation)) => {
            format!(" (trace id {trace}, correlation id {correlation})")
        }
        _ => String::new(),
    }
}

impl TokenError {
    /// Entra outages and network failures pass; refusals of the credentials and unreadable
    /// credential files do not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Refused { status, .. } | Self::InvalidResponse { status, .. } => {
                *status >= 500 || *status == 429
            }
            Self::Credential { .. } => false,
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
    timestamp: Option<String>,
}

/// Where tokens come from; replaced as a whole when a reload changes it.
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    token_url: url::Url,
    credentials: ClientCredentials,
    scope: String,
}

impl Settings {
    fn new(authority_host: &url::Url, credentials: ClientCredentials, scope: String) -> Self {
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
            token_url,
            credentials,
            scope,
        }
    }
}

/// One authentication profile: where its tokens come from and the senders it serves.
#[derive(Debug, Clone, PartialEq)]
struct Profile {
    /// Cache key: [`DEFAULT_PROFILE`] or the profile's name.
    key: String,
    senders: Vec<String>,
    settings: Settings,
}

/// Fetches and caches one token per authentication profile. Clones share the cache and settings,
/// so the reload task and the deliveries see the same tokens.
#[derive(Clone)]
pub struct TokenProvider {
    http: reqwest::Client,
    /// The default profile (`[auth]`) first.
    profiles: Arc<std::sync::Mutex<Vec<Profile>>>,
    cache: Cache<String, Arc<AccessToken>>,
    backoff: ExponentialBuilder,
}

struct RefreshAhead;

impl moka::Expiry<String, Arc<AccessToken>> for RefreshAhead {
    fn expire_after_create(
        &self,
        _key: &String,
        token: &Arc<AccessToken>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(token.refresh_after())
    }
}

/// Transient token failures: three more tries, 0.5 s, 1 s, 2 s apart (jittered). Configuration
/// failures are not retried at all; the delivery's own schedule takes over after that.
fn default_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(3)
        .with_jitter()
}

/// Every profile of `auth`, the default first.
fn profiles_of(auth: &AuthConfig) -> Result<Vec<Profile>, ConfigError> {
    Ok(auth
        .all_credentials()?
        .into_iter()
        .map(|(name, senders, credentials)| Profile {
            key: name.unwrap_or_else(|| DEFAULT_PROFILE.to_string()),
            senders,
            settings: Settings::new(&auth.authority_host, credentials, auth.scope.clone()),
        })
        .collect())
}

impl TokenProvider {
    /// A provider with the default profile only.
    pub fn new(
        http: reqwest::Client,
        authority_host: &url::Url,
        credentials: ClientCredentials,
        scope: String,
    ) -> Self {
        Self::with_profiles(
            http,
            vec![Profile {
                key: DEFAULT_PROFILE.to_string(),
                senders: Vec::new(),
                settings: Settings::new(authority_host, credentials, scope),
            }],
        )
    }

    /// A provider for `[auth]` and every `[auth.profiles.NAME]`.
    ///
    /// # Errors
    /// A profile lacks or mixes credentials.
    pub fn from_config(http: reqwest::Client, auth: &AuthConfig) -> Result<Self, ConfigError> {
        Ok(Self::with_profiles(http, profiles_of(auth)?))
    }

    fn with_profiles(http: reqwest::Client, profiles: Vec<Profile>) -> Self {
        Self {
            http,
            profiles: Arc::new(std::sync::Mutex::new(profiles)),
            cache: Cache::builder()
                .max_capacity(1024)
                .expire_after(RefreshAhead)
                .build(),
            backoff: default_backoff(),
        }
    }

    /// The name of the profile that sends as `sender` ([`DEFAULT_PROFILE`] for `[auth]`);
    /// Graph counts requests per profile and mailbox, so it is also the scheduler's lane.
    pub fn profile_for(&self, sender: &str) -> String {
        let profiles = self.lock();
        let listed: Vec<(String, Vec<String>)> = profiles
            .iter()
            .map(|p| (p.key.clone(), p.senders.clone()))
            .collect();
        select_profile(&listed, sender)
            .unwrap_or(DEFAULT_PROFILE)
            .to_string()
    }

    /// A valid token of the default profile (see [`TokenProvider::token_for`]).
    ///
    /// # Errors
    /// The token endpoint refused or could not be reached, or the credential is unusable.
    pub async fn token(&self) -> Result<Arc<AccessToken>, TokenError> {
        self.token_of(DEFAULT_PROFILE.to_string()).await
    }

    /// A valid token of the profile that sends as `sender`, from the cache or freshly fetched
    /// (one fetch for all concurrent callers of that profile).
    ///
    /// # Errors
    /// The token endpoint refused or could not be reached, or the credential is unusable.
    pub async fn token_for(&self, sender: &str) -> Result<Arc<AccessToken>, TokenError> {
        self.token_of(self.profile_for(sender)).await
    }

    async fn token_of(&self, key: String) -> Result<Arc<AccessToken>, TokenError> {
        let fetch = self.fetch(key.clone());
        self.cache
            .try_get_with(key, fetch)
            .await
            .map_err(|err| (*err).clone())
    }

    /// Drops the default profile's cached token.
    pub async fn invalidate(&self) {
        self.cache.invalidate(DEFAULT_PROFILE).await;
    }

    /// Drops the cached token of `sender`'s profile, after Graph refused it.
    pub async fn invalidate_for(&self, sender: &str) {
        self.cache.invalidate(&self.profile_for(sender)).await;
    }

    /// Applies reloaded settings; a change drops the cached tokens so the next ones use them.
    /// Returns whether anything changed.
    pub async fn update(&self, auth: &AuthConfig) -> Result<bool, ConfigError> {
        let new = profiles_of(auth)?;
        let changed = {
            let mut profiles = self.lock();
            let changed = *profiles != new;
            *profiles = new;
            changed
        };
        if changed {
            tracing::info!("authentication settings changed; the next tokens use them");
            self.cache.invalidate_all();
        }
        Ok(changed)
    }

    /// Follows the configuration until `stop`: a reload (SIGHUP) applies changed `[auth]`
    /// settings, and credential files whose content changed are used from the next token on.
    /// Also warns from 30 days before `auth.client_secret_expires`, once a day.
    /// `credentials_changed` is called after every change, so mail held back by a credential
    /// fault is tried again at once rather than at the next fault retry.
    pub async fn follow(
        self,
        mut config: watch::Receiver<Arc<Config>>,
        stop: tokio_util::sync::CancellationToken,
        credentials_changed: impl Fn() + Send,
    ) {
        let mut fingerprint = self.credential_fingerprint();
        let mut warned_on = None;
        let mut poll = tokio::time::interval(CREDENTIAL_POLL);
        loop {
            let today = days_since_epoch();
            if warned_on != Some(today) {
                warned_on = Some(today);
                let days_left = config.borrow().auth.secret_expires_in_days(today);
                if let Some(days) = days_left {
                    metrics::gauge!(SECRET_EXPIRY).set(((today + days) * 86_400) as f64);
                }
                if let Some(days) = days_left
                    && days <= SECRET_EXPIRY_WARNING_DAYS
                {
                    tracing::warn!(
                        days_left = days,
                        "the client secret expires soon (auth.client_secret_expires): create a new one and update auth.client_secret_file"
                    );
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                changed = config.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let new = config.borrow_and_update().clone();
                    match self.update(&new.auth).await {
                        Ok(true) => credentials_changed(),
                        Ok(false) => {}
                        Err(err) => tracing::error!(error = %err, "reloaded [auth] unusable; keeping the current credentials"),
                    }
                    warned_on = None;
                    fingerprint = self.credential_fingerprint();
                }
                _ = poll.tick() => {
                    let now = self.credential_fingerprint();
                    if now != fingerprint {
                        fingerprint = now;
                        tracing::info!("a credential file changed; the next token request uses it");
                        self.cache.invalidate_all();
                        credentials_changed();
                    }
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Profile>> {
        self.profiles.lock().unwrap_or_else(|err| err.into_inner())
    }

    /// A fingerprint of the credential files' contents (not the content itself), to notice a
    /// rotation: Kubernetes swaps a `..data` symlink, which file-watch events miss.
    pub fn credential_fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut files: Vec<std::path::PathBuf> = Vec::new();
        for profile in self.lock().iter() {
            match &profile.settings.credentials.credential {
                Credential::Secret { file, .. } => files.extend(file.iter().cloned()),
                Credential::Certificate {
                    certificate_file,
                    private_key_file,
                    ..
                } => files.extend([certificate_file.clone(), private_key_file.clone()]),
                // Read on every fetch anyway; it rotates while the cached token stays valid.
                Credential::AssertionFile(_) => {}
            }
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for file in files {
            std::fs::read(&file).ok().hash(&mut hasher);
        }
        hasher.finish()
    }

    async fn fetch(&self, key: String) -> Result<Arc<AccessToken>, TokenError> {
        // A profile removed by a reload falls back to the default.
        let settings = {
            let profiles = self.lock();
            profiles
                .iter()
                .find(|p| p.key == key)
                .or(profiles.first())
                .map(|p| p.settings.clone())
                .expect("the default profile always exists")
        };
        (|| async {
            let fetched = self.fetch_once(&settings).await;
            let outcome = match &fetched {
                Ok(_) => "issued",
                Err(TokenError::Refused { .. } | TokenError::Credential { .. }) => "refused",
                Err(TokenError::Unreachable { .. } | TokenError::InvalidResponse { .. }) => "failed",
            };
            metrics::counter!(TOKEN_REQUESTS, "outcome" => outcome).increment(1);
            fetched
        })
        .retry(self.backoff)
            .when(TokenError::is_retryable)
            .notify(|err, after| {
                tracing::warn!(error = %err, retry_in_ms = after.as_millis() as u64, "token request failed; retrying");
            })
            .await
    }

    /// The credential part of the token request form, read from its files now.
    fn credential_form(
        &self,
        settings: &Settings,
    ) -> Result<Vec<(&'static str, SecretString)>, TokenError> {
        let credentials = &settings.credentials;
        let assertion = |value: SecretString| {
            vec![
                ("client_assertion_type", SecretString::from(ASSERTION_TYPE)),
                ("client_assertion", value),
            ]
        };
        Ok(match &credentials.credential {
            Credential::Secret { value, file: None } => vec![("client_secret", value.clone())],
            Credential::Secret {
                file: Some(file), ..
            } => vec![(
                "client_secret",
                read_secret_file(file).map_err(|err| TokenError::Credential {
                    key: err.key,
                    problem: err.problem,
                })?,
            )],
            Credential::Certificate {
                certificate_file,
                private_key_file,
                algorithm,
            } => {
                let certificate = Certificate::load(certificate_file, private_key_file)?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                assertion(SecretString::from(certificate.sign(
                    *algorithm,
                    &credentials.client_id,
                    settings.token_url.as_str(),
                    now,
                )?))
            }
            Credential::AssertionFile(file) => {
                let text = std::fs::read_to_string(file).map_err(|err| TokenError::Credential {
                    key: "auth.client_assertion_file".into(),
                    problem: format!("cannot read {}: {err}", file.display()),
                })?;
                let value = text.trim();
                if value.is_empty() {
                    return Err(TokenError::Credential {
                        key: "auth.client_assertion_file".into(),
                        problem: format!("{} is empty", file.display()),
                    });
                }
                assertion(SecretString::from(value))
            }
        })
    }

    async fn fetch_once(&self, settings: &Settings) -> Result<Arc<AccessToken>, TokenError> {
        let url = settings.token_url.as_str();
        let unreachable = |err: reqwest::Error| TokenError::Unreachable {
            url: url.to_string(),
            reason: error_chain(&err),
        };
        let credential = self.credential_form(settings)?;
        let mut form: Vec<(&str, &str)> = vec![
            ("client_id", settings.credentials.client_id.as_str()),
            ("scope", settings.scope.as_str()),
            ("grant_type", "client_credentials"),
        ];
        form.extend(
            credential
                .iter()
                .map(|(name, value)| (*name, value.expose_secret())),
        );
        let client_request_id = uuid::Uuid::new_v4().to_string();
        let response = self
            .http
            .post(settings.token_url.clone())
            .header("client-request-id", &client_request_id)
            .form(&form)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status().as_u16();
        // Microsoft support asks for these ids; the body repeats them on errors.
        let request_id = response
            .headers()
            .get("x-ms-request-id")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
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
            tracing::info!(
                lifetime_s = token.expires_in,
                client_request_id,
                x_ms_request_id = request_id,
                "fetched access token"
            );
            return Ok(Arc::new(AccessToken {
                value: SecretString::from(token.access_token),
                lifetime: Duration::from_secs(token.expires_in),
            }));
        }
        let refusal: ErrorResponse = serde_json::from_slice(&body).map_err(|_| invalid())?;
        tracing::debug!(
            client_request_id,
            x_ms_request_id = request_id,
            status,
            "token request refused"
        );
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
            ids: Box::new(EntraIds {
                trace_id: refusal.trace_id,
                correlation_id: refusal.correlation_id,
                timestamp: refusal.timestamp,
            }),
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
            ClientCredentials::with_secret("contoso.onmicrosoft.com", "c", "s"),
            "https://graph.microsoft.com/.default".into(),
        );
        assert_eq!(
            provider.lock()[0].settings.token_url.as_str(),
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
            ids: Box::new(EntraIds {
                trace_id: Some("t".into()),
                correlation_id: Some("c".into()),
                timestamp: None,
            }),
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
