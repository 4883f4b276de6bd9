//! `[auth]`: the Entra app registration whose client-credentials token sends the mail.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

use super::{ConfigError, check_endpoint};

/// Tenants that are not one organisation: Entra refuses client credentials on them (AADSTS9001023)
/// or their meaning for this flow is unconfirmed.
const MULTI_TENANT_NAMES: [&str; 3] = ["common", "consumers", "organizations"];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Directory (tenant) ID: a GUID or a domain such as `contoso.onmicrosoft.com`.
    pub tenant_id: Option<String>,
    /// Application (client) ID of the app registration.
    pub client_id: Option<String>,
    /// The client secret **value** (not its ID). Prefer `client_secret_file`.
    #[serde(serialize_with = "redact")]
    pub client_secret: Option<SecretString>,
    /// File holding the client secret value (trailing newline ignored).
    pub client_secret_file: Option<PathBuf>,
    /// Entra host, e.g. `https://login.microsoftonline.com`.
    pub authority_host: url::Url,
    /// Resource scope of the token; must end in `/.default`.
    pub scope: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            tenant_id: None,
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            authority_host: url::Url::parse("https://login.microsoftonline.com")
                .expect("static URL"),
            scope: "https://graph.microsoft.com/.default".into(),
        }
    }
}

/// What the token endpoint needs, once the configuration says it all.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: SecretString,
}

impl AuthConfig {
    /// Reads `client_secret_file` into `client_secret`.
    pub(super) fn load_secret_file(&mut self) -> Result<(), ConfigError> {
        let Some(path) = &self.client_secret_file else {
            return Ok(());
        };
        if self.client_secret.is_some() {
            return Err(ConfigError::new(
                "auth.client_secret_file",
                "set either auth.client_secret or auth.client_secret_file, not both",
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|err| {
            ConfigError::new(
                "auth.client_secret_file",
                format!("cannot read {}: {err}", path.display()),
            )
        })?;
        let value = text.trim_end_matches(['\r', '\n']);
        if value.is_empty() {
            return Err(ConfigError::new(
                "auth.client_secret_file",
                format!(
                    "{} is empty; put the client secret value in it",
                    path.display()
                ),
            ));
        }
        self.client_secret = Some(SecretString::from(value));
        Ok(())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_endpoint("auth.authority_host", &self.authority_host)?;
        if !self.scope.ends_with("/.default") {
            return Err(ConfigError::new(
                "auth.scope",
                format!(
                    "{:?} must be a resource followed by /.default, e.g. https://graph.microsoft.com/.default",
                    self.scope
                ),
            ));
        }
        if let Some(tenant) = &self.tenant_id {
            if tenant.is_empty()
                || !tenant
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                return Err(ConfigError::new(
                    "auth.tenant_id",
                    format!("{tenant:?} is not a tenant GUID or domain name"),
                ));
            }
            if MULTI_TENANT_NAMES
                .iter()
                .any(|name| tenant.eq_ignore_ascii_case(name))
            {
                return Err(ConfigError::new(
                    "auth.tenant_id",
                    format!(
                        "{tenant:?} is not one organisation; client credentials need your tenant's ID or domain"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The credentials `serve` and `check-config` need.
    ///
    /// # Errors
    /// Names every key that is missing.
    pub fn credentials(&self) -> Result<ClientCredentials, ConfigError> {
        let missing: Vec<&str> = [
            ("auth.tenant_id", self.tenant_id.is_none()),
            ("auth.client_id", self.client_id.is_none()),
            (
                "auth.client_secret (or auth.client_secret_file)",
                self.client_secret.is_none(),
            ),
        ]
        .into_iter()
        .filter_map(|(key, absent)| absent.then_some(key))
        .collect();
        match (&self.tenant_id, &self.client_id, &self.client_secret) {
            (Some(tenant_id), Some(client_id), Some(secret))
                if !secret.expose_secret().is_empty() =>
            {
                Ok(ClientCredentials {
                    tenant_id: tenant_id.clone(),
                    client_id: client_id.clone(),
                    client_secret: secret.clone(),
                })
            }
            _ => Err(ConfigError::new(
                "auth",
                format!(
                    "missing {}; set them in the configuration file or as GRAPH_RELAY_AUTH__<KEY>, or run with --dry-run DIR",
                    if missing.is_empty() {
                        "auth.client_secret".to_string()
                    } else {
                        missing.join(", ")
                    }
                ),
            )),
        }
    }
}

fn redact<S: Serializer>(secret: &Option<SecretString>, serializer: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => serializer.serialize_str("<redacted>"),
        None => serializer.serialize_none(),
    }
}
