//! `[smtp.listeners.NAME]`: listeners beyond `smtp.listen`, for instance 587 with STARTTLS and 465
//! with implicit TLS, or a plain port for old devices limited to one network. Named tables, so an
//! environment can add one (`GRAPH_RELAY_SMTP__LISTENERS__SUBMISSION__ADDRESS=...`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::list;
use super::policy::{Network, loopback};
use crate::config::graph::{SenderKind, SenderOverride};

/// How a listener speaks TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// Plain text; offers STARTTLS when `[smtp.tls]` is configured, but does not insist.
    #[default]
    Plain,
    /// Plain text until STARTTLS, which the client must use before AUTH or MAIL.
    Starttls,
    /// TLS from the first byte (port 465, "SMTPS").
    Tls,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Address to bind (required).
    pub address: Option<SocketAddr>,
    /// `plain`, `starttls` or `tls`.
    pub mode: ListenerMode,
    /// Client networks allowed to connect (CIDR list); loopback only by default.
    #[serde(with = "list")]
    pub allowed_networks: Vec<Network>,
    /// Clients must authenticate before MAIL FROM.
    pub require_auth: bool,
    /// Offer AUTH without TLS, for legacy devices that cannot do TLS (passwords travel in clear).
    pub plaintext_auth: bool,
    /// Which mailbox its messages are sent as, instead of `graph.sender` (an SMTP user's
    /// `graph.user_senders` still wins).
    pub sender: Option<SenderKind>,
    /// The mailbox for `sender = "fixed"`.
    pub fixed_sender: Option<String>,
}

impl ListenerConfig {
    /// Its `sender` and `fixed_sender`.
    pub fn sender_override(&self) -> SenderOverride {
        SenderOverride {
            sender: self.sender,
            fixed_sender: self.fixed_sender.clone(),
        }
    }
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            address: None,
            mode: ListenerMode::Plain,
            allowed_networks: loopback(),
            require_auth: false,
            plaintext_auth: false,
            sender: None,
            fixed_sender: None,
        }
    }
}
