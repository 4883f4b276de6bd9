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
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            endpoint: url::Url::parse("https://graph.microsoft.com/v1.0").expect("static URL"),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
        }
    }
}

impl GraphConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
