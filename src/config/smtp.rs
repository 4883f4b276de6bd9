//! `[smtp]`: the SMTP listeners that legacy senders connect to, their TLS and AUTH, who may relay,
//! and the limits that keep one client from exhausting the relay.

mod list;
mod listeners;
mod policy;
mod security;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
pub use listeners::{ListenerConfig, ListenerMode};
pub use policy::{ClientSpec, Domain, Network, SenderPattern, SenderRule};
pub use security::{SmtpAuthConfig, TlsConfig};

/// Graph refuses messages with more than 500 recipients (To + Cc + Bcc).
pub const GRAPH_MAX_RECIPIENTS: usize = 500;

/// The name under which `smtp.listen` and its keys appear in logs.
pub const MAIN_LISTENER: &str = "listen";

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
    /// Time allowed for each command line, counted from the previous reply: a silent client and
    /// one trickling a byte at a time are both disconnected.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Time allowed for one whole DATA or BDAT transfer, however the bytes arrive.
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    /// Client networks allowed to connect to `smtp.listen` (CIDR list); loopback by default.
    #[serde(with = "list")]
    pub allowed_networks: Vec<Network>,
    /// Clients of `smtp.listen` must authenticate before MAIL FROM.
    pub require_auth: bool,
    /// `smtp.listen` offers AUTH without TLS (for legacy devices; passwords travel in clear).
    pub plaintext_auth: bool,
    /// Recipient domains the relay sends to (550 5.7.1 for others); empty means any.
    #[serde(with = "list")]
    pub allowed_recipient_domains: Vec<Domain>,
    /// Open SMTP connections at once, over all listeners; beyond it `421 4.7.0` and close.
    pub max_connections: usize,
    /// Open SMTP connections from one client address.
    pub max_connections_per_client: usize,
    /// Messages accepted on one connection before the client must reconnect.
    pub max_messages_per_connection: usize,
    /// Error replies in one session before it is closed with `421 4.7.0`.
    pub max_errors: usize,
    pub tls: TlsConfig,
    pub auth: SmtpAuthConfig,
    /// Further listeners by name.
    pub listeners: BTreeMap<String, ListenerConfig>,
    /// Sender rules by name; none means any client may use any sender.
    pub sender_policy: BTreeMap<String, SenderRule>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 2525)),
            hostname: "localhost".into(),
            // Graph's own ceiling (150 MiB); `graph.size_limit` lowers it to what Graph takes.
            max_message_size: 150 * 1024 * 1024,
            max_recipients: GRAPH_MAX_RECIPIENTS,
            idle_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            allowed_networks: policy::loopback(),
            require_auth: false,
            plaintext_auth: false,
            allowed_recipient_domains: Vec::new(),
            max_connections: 1000,
            max_connections_per_client: 50,
            max_messages_per_connection: 1000,
            max_errors: 20,
            tls: TlsConfig::default(),
            auth: SmtpAuthConfig::default(),
            listeners: BTreeMap::new(),
            sender_policy: BTreeMap::new(),
        }
    }
}

impl SmtpConfig {
    /// Every listener by name: `smtp.listen` first (plain), then `[smtp.listeners.NAME]`.
    pub fn all_listeners(&self) -> Vec<(String, ListenerConfig)> {
        let main = ListenerConfig {
            address: Some(self.listen),
            mode: ListenerMode::Plain,
            allowed_networks: self.allowed_networks.clone(),
            require_auth: self.require_auth,
            plaintext_auth: self.plaintext_auth,
            // `graph.sender` is this listener's setting.
            sender: None,
            fixed_sender: None,
        };
        std::iter::once((MAIN_LISTENER.to_string(), main))
            .chain(self.listeners.clone())
            .collect()
    }

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
        for (key, value) in [
            ("smtp.idle_timeout", self.idle_timeout),
            ("smtp.data_timeout", self.data_timeout),
            ("smtp.auth.lockout", self.auth.lockout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(key, "must be longer than 0s"));
            }
        }
        for (key, value) in [
            ("smtp.max_connections", self.max_connections),
            (
                "smtp.max_connections_per_client",
                self.max_connections_per_client,
            ),
            (
                "smtp.max_messages_per_connection",
                self.max_messages_per_connection,
            ),
            ("smtp.max_errors", self.max_errors),
            ("smtp.auth.max_failures", self.auth.max_failures as usize),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        if self.max_connections_per_client > self.max_connections {
            return Err(ConfigError::new(
                "smtp.max_connections_per_client",
                "must not exceed smtp.max_connections",
            ));
        }
        if !["1.2", "1.3"].contains(&self.tls.min_version.as_str()) {
            return Err(ConfigError::new(
                "smtp.tls.min_version",
                "must be \"1.2\" or \"1.3\"",
            ));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(ConfigError::new(
                "smtp.tls",
                "cert_file and key_file must be set together",
            ));
        }
        for (name, rule) in &self.sender_policy {
            if rule.clients.is_empty() {
                return Err(ConfigError::new(
                    format!("smtp.sender_policy.{name}.clients"),
                    "is empty, so the rule covers nobody",
                ));
            }
            if rule.allow.is_empty() && rule.deny.is_empty() {
                return Err(ConfigError::new(
                    format!("smtp.sender_policy.{name}"),
                    "needs allow or deny",
                ));
            }
        }
        self.validate_listeners()
    }

    fn validate_listeners(&self) -> Result<(), ConfigError> {
        let mut addresses = Vec::new();
        for (name, listener) in self.all_listeners() {
            let prefix = match name.as_str() {
                MAIN_LISTENER => "smtp".to_owned(),
                _ => format!("smtp.listeners.{name}"),
            };
            let key = |field: &str| format!("{prefix}.{field}");
            let Some(address) = listener.address else {
                return Err(ConfigError::new(key("address"), "is required"));
            };
            if addresses.contains(&address) && address.port() != 0 {
                return Err(ConfigError::new(
                    key("address"),
                    format!("{address} is already used by another listener"),
                ));
            }
            addresses.push(address);
            if listener.allowed_networks.is_empty() {
                return Err(ConfigError::new(
                    key("allowed_networks"),
                    "is empty, so nobody could connect",
                ));
            }
            if listener.mode != ListenerMode::Plain && !self.tls.enabled() {
                return Err(ConfigError::new(
                    key("mode"),
                    "needs smtp.tls.cert_file and smtp.tls.key_file",
                ));
            }
            listener.sender_override().validate(&prefix)?;
            if listener.require_auth && self.auth.users_file.is_none() {
                return Err(ConfigError::new(
                    key("require_auth"),
                    "needs smtp.auth.users_file",
                ));
            }
        }
        Ok(())
    }
}
