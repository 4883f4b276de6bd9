//! `[smtp]`: the SMTP listener that legacy senders connect to.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Graph refuses messages with more than 500 recipients (To + Cc + Bcc).
pub const GRAPH_MAX_RECIPIENTS: usize = 500;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Address of the SMTP listener; loopback by default so only local programs can relay.
    pub listen: SocketAddr,
    /// Name announced in the greeting and in EHLO.
    pub hostname: String,
    /// Largest message accepted, in bytes (announced as EHLO SIZE).
    pub max_message_size: u64,
    /// Recipients per message; Graph's own limit is 500.
    pub max_recipients: usize,
    /// How long a client may stay silent before it is disconnected.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 2525)),
            hostname: "localhost".into(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: GRAPH_MAX_RECIPIENTS,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

impl SmtpConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.hostname.is_empty()
            || self
                .hostname
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ConfigError::new(
                "smtp.hostname",
                "must be a host name without spaces",
            ));
        }
        if self.max_message_size == 0 {
            return Err(ConfigError::new(
                "smtp.max_message_size",
                "must be greater than 0",
            ));
        }
        if !(1..=GRAPH_MAX_RECIPIENTS).contains(&self.max_recipients) {
            return Err(ConfigError::new(
                "smtp.max_recipients",
                format!("must be between 1 and {GRAPH_MAX_RECIPIENTS} (Graph's limit per message)"),
            ));
        }
        if self.idle_timeout.is_zero() {
            return Err(ConfigError::new(
                "smtp.idle_timeout",
                "must be longer than 0s",
            ));
        }
        Ok(())
    }
}
