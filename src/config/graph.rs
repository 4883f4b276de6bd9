//! `[graph]`: where and how the Microsoft Graph `sendMail` requests go.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, check_endpoint};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GraphConfig {
    /// Graph root including the version, e.g. `https://graph.microsoft.com/v1.0`.
    pub endpoint: url::Url,
    /// Time allowed to open a connection to Graph or to the token endpoint.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for a whole request, upload included.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// HTTP(S) proxy for Graph and Entra (default: `$HTTPS_PROXY`); loopback is always direct.
    #[serde(serialize_with = "redact_password")]
    pub proxy: Option<url::Url>,
    /// PEM bundle of extra trusted CAs, for TLS-inspecting proxies (added to the system's).
    pub ca_file: Option<std::path::PathBuf>,
    /// The content of `ca_file`, read at load.
    #[serde(skip)]
    pub ca_pem: Option<Vec<u8>>,
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            endpoint: url::Url::parse("https://graph.microsoft.com/v1.0").expect("static URL"),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            proxy: None,
            ca_file: None,
            ca_pem: None,
        }
    }
}

/// Environment variables naming the outbound proxy when `graph.proxy` is not set.
const PROXY_VARS: [&str; 2] = ["HTTPS_PROXY", "https_proxy"];

impl GraphConfig {
    /// Takes the proxy from the environment when not configured, and reads `ca_file`.
    pub(super) fn resolve(
        &mut self,
        env: &std::collections::HashMap<String, String>,
    ) -> Result<(), ConfigError> {
        if self.proxy.is_none()
            && let Some(value) = PROXY_VARS
                .iter()
                .find_map(|name| env.get(*name).filter(|v| !v.is_empty()))
        {
            self.proxy = Some(url::Url::parse(value).map_err(|err| {
                ConfigError::new("graph.proxy", format!("HTTPS_PROXY is not a URL: {err}"))
            })?);
        }
        if let Some(path) = &self.ca_file {
            let path = super::absolute("graph.ca_file", path)?;
            let pem = std::fs::read(&path).map_err(|err| {
                ConfigError::new(
                    "graph.ca_file",
                    format!("cannot read {}: {err}", path.display()),
                )
            })?;
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(ConfigError::new(
                    "graph.ca_file",
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
            self.ca_pem = Some(pem);
            self.ca_file = Some(path);
        }
        Ok(())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(proxy) = &self.proxy
            && !matches!(proxy.scheme(), "http" | "https")
        {
            return Err(ConfigError::new(
                "graph.proxy",
                format!(
                    "scheme {} is not supported; use http:// or https://",
                    proxy.scheme()
                ),
            ));
        }
        check_endpoint("graph.endpoint", &self.endpoint)?;
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::new(
                "graph.connect_timeout",
                "must be longer than 0s",
            ));
        }
        if self.request_timeout < self.connect_timeout {
            return Err(ConfigError::new(
                "graph.request_timeout",
                "must not be shorter than graph.connect_timeout",
            ));
        }
        Ok(())
    }
}

/// A proxy URL without its password, for `check-config`.
fn redact_password<S: serde::Serializer>(
    proxy: &Option<url::Url>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match proxy {
        Some(url) => {
            let mut shown = url.clone();
            if shown.password().is_some() {
                let _ = shown.set_password(Some("redacted"));
            }
            serializer.serialize_str(shown.as_str())
        }
        None => serializer.serialize_none(),
    }
}
