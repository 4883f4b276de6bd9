//! `[graph]`: where and how the Microsoft Graph `sendMail` requests go, and in what form
//! (`format`, `sender`, the size ladder) messages are handed over.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, check_endpoint};
use crate::convert::{self, Format, SenderMode, Unparseable};

/// Exchange Online's largest configurable message size, and Graph's per-file upload limit.
pub const MAX_UPLOAD_MESSAGE_SIZE: u64 = 150 * 1024 * 1024;
/// Graph's per-request limit (microsoft-graph.md §3).
pub const MAX_REQUEST_BYTES: u64 = 4 * 1024 * 1024;
/// The largest raw message whose single request fits in [`MAX_REQUEST_BYTES`]: base64 (of the
/// whole message in MIME, of the attachments in JSON) grows data by a third, and the relay adds
/// headers (Received, Bcc, Message-ID) or JSON framing, for which 64 KiB are kept free. The
/// request is measured again after conversion.
pub const SINGLE_REQUEST_RAW_LIMIT: u64 = MAX_REQUEST_BYTES / 4 * 3 - 64 * 1024;

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
    /// `json` (converted to Graph's message resource) or `mime` (the whole message, base64).
    pub format: Format,
    /// Graph's `saveToSentItems`; JSON format only, MIME sendMail always saves.
    pub save_to_sent_items: bool,
    /// Which mailbox to send as: `header` (From), `envelope` (MAIL FROM) or `fixed`.
    pub sender: SenderKind,
    /// The mailbox for `sender = "fixed"`; the original From is kept as Reply-To.
    pub fixed_sender: String,
    /// `sender` and `fixed_sender` per SMTP user (the name it authenticated with), ahead of
    /// its listener's and these.
    pub user_senders: BTreeMap<String, SenderOverride>,
    /// Comma-separated `X-` header names to carry in JSON format (at most five, in this order);
    /// empty carries the message's first five `X-` headers.
    pub x_headers: String,
    /// Data without a header section: `mime` (wrapped and delivered) or `refuse` (`554 5.6.0`).
    pub unparseable: Unparseable,
    /// Messages too large for one 4 MiB request: `refuse` at DATA, or `upload` through a draft
    /// and upload sessions (needs Mail.ReadWrite).
    pub large_messages: LargeMessages,
    /// Largest message, in bytes, under `large_messages = "upload"`: the tenant's limit
    /// (Exchange's default 35 MiB, at most 150 MiB).
    pub max_message_size: u64,
}

/// `graph.sender` as written in the file; [`GraphConfig::convert_options`] adds the mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SenderKind {
    #[default]
    Header,
    Envelope,
    Fixed,
}

/// `sender` and `fixed_sender` of an SMTP user (`[graph.user_senders.NAME]`) or a listener,
/// for devices that cannot set a From of their own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenderOverride {
    pub sender: Option<SenderKind>,
    pub fixed_sender: Option<String>,
}

impl SenderOverride {
    /// The mode it sets, if any; [`Self::validate`] has made sure a fixed one has a mailbox.
    pub fn mode(&self) -> Option<SenderMode> {
        Some(sender_mode(self.sender?, self.fixed_sender.as_deref()))
    }

    /// Checks that `prefix.sender` and `prefix.fixed_sender` make a usable pair: a fixed sender
    /// names its mailbox, and a mailbox is not given without `sender = "fixed"`.
    pub(super) fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let key = format!("{prefix}.fixed_sender");
        match (self.sender, self.fixed_sender.as_deref().map(str::trim)) {
            (Some(SenderKind::Fixed), None | Some("")) => Err(ConfigError::new(
                key,
                format!("must name the mailbox to send as when {prefix}.sender = \"fixed\""),
            )),
            (Some(SenderKind::Fixed), Some(mailbox)) => check_mailbox(&key, mailbox),
            (_, Some(_)) => Err(ConfigError::new(
                key,
                format!("is used only with {prefix}.sender = \"fixed\"; set that too or remove it"),
            )),
            (_, None) => Ok(()),
        }
    }
}

/// `graph.sender` (or an override) with its mailbox.
fn sender_mode(kind: SenderKind, fixed_sender: Option<&str>) -> SenderMode {
    match kind {
        SenderKind::Header => SenderMode::Header,
        SenderKind::Envelope => SenderMode::Envelope,
        SenderKind::Fixed => SenderMode::Fixed(fixed_sender.unwrap_or_default().trim().to_owned()),
    }
}

/// A `fixed_sender` value must look like a mailbox address.
fn check_mailbox(key: &str, mailbox: &str) -> Result<(), ConfigError> {
    if !mailbox.contains('@') || mailbox.contains(char::is_whitespace) {
        return Err(ConfigError::new(
            key,
            format!("{mailbox:?} is not a mailbox address"),
        ));
    }
    Ok(())
}

/// `graph.large_messages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LargeMessages {
    /// The SMTP size limit stays below what one request can carry.
    #[default]
    Refuse,
    /// Draft, upload sessions for large attachments, then send.
    Upload,
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
            format: Format::Json,
            save_to_sent_items: true,
            sender: SenderKind::Header,
            fixed_sender: String::new(),
            user_senders: BTreeMap::new(),
            x_headers: String::new(),
            unparseable: Unparseable::Mime,
            large_messages: LargeMessages::Refuse,
            max_message_size: 35 * 1024 * 1024,
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
        self.validate_fidelity()
    }

    fn validate_fidelity(&self) -> Result<(), ConfigError> {
        if !self.save_to_sent_items && self.format == Format::Mime {
            return Err(ConfigError::new(
                "graph.save_to_sent_items",
                "false is impossible with graph.format = \"mime\": MIME sendMail always saves to \
                 Sent Items; use graph.format = \"json\" or remove graph.save_to_sent_items",
            ));
        }
        let fixed = self.fixed_sender.trim();
        if self.sender == SenderKind::Fixed && fixed.is_empty() {
            return Err(ConfigError::new(
                "graph.fixed_sender",
                "must name the mailbox to send as when graph.sender = \"fixed\"",
            ));
        }
        if !fixed.is_empty() {
            check_mailbox("graph.fixed_sender", fixed)?;
        }
        for (name, user) in &self.user_senders {
            let prefix = format!("graph.user_senders.{name}");
            user.validate(&prefix)?;
            if user.sender.is_none() {
                return Err(ConfigError::new(
                    format!("{prefix}.sender"),
                    "is required: \"header\", \"envelope\" or \"fixed\"",
                ));
            }
        }
        let names = self.x_header_names();
        if names.len() > convert::MAX_X_HEADERS {
            return Err(ConfigError::new(
                "graph.x_headers",
                format!(
                    "names {} headers; Graph carries at most {}",
                    names.len(),
                    convert::MAX_X_HEADERS
                ),
            ));
        }
        if let Some(bad) = names.iter().find(|n| {
            !n.to_ascii_lowercase().starts_with("x-")
                || n.len() < 3
                || n.chars().any(|c| !c.is_ascii_graphic() || c == ':')
        }) {
            return Err(ConfigError::new(
                "graph.x_headers",
                format!(
                    "{bad:?} is not an X- header name (Graph accepts only names starting with x-)"
                ),
            ));
        }
        if !(1..=MAX_UPLOAD_MESSAGE_SIZE).contains(&self.max_message_size) {
            return Err(ConfigError::new(
                "graph.max_message_size",
                format!(
                    "must be between 1 and {MAX_UPLOAD_MESSAGE_SIZE} bytes (150 MiB, Exchange's maximum)"
                ),
            ));
        }
        Ok(())
    }

    /// The EHLO SIZE and DATA limit: the smaller of `smtp.max_message_size` and what
    /// `large_messages` can deliver (one request, or `graph.max_message_size` by upload).
    pub fn size_limit(&self, smtp_max_message_size: u64) -> u64 {
        let graph = match self.large_messages {
            LargeMessages::Refuse => SINGLE_REQUEST_RAW_LIMIT,
            LargeMessages::Upload => self.max_message_size,
        };
        smtp_max_message_size.min(graph)
    }

    /// `x_headers` split at commas.
    fn x_header_names(&self) -> Vec<String> {
        self.x_headers
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The sender setting for a message: its SMTP user's (`user_senders`), else its listener's,
    /// else `sender` and `fixed_sender`.
    pub fn sender_for(&self, listener: &SenderOverride, user: Option<&str>) -> SenderMode {
        user.and_then(|name| self.user_senders.get(name))
            .and_then(SenderOverride::mode)
            .or_else(|| listener.mode())
            .unwrap_or_else(|| sender_mode(self.sender, Some(&self.fixed_sender)))
    }

    /// What [`convert::convert`] needs, with `[graph]`'s own sender setting; `hostname` is
    /// `smtp.hostname`.
    pub fn convert_options(&self, hostname: &str) -> convert::Options {
        convert::Options {
            format: self.format,
            save_to_sent_items: self.save_to_sent_items,
            sender: sender_mode(self.sender, Some(&self.fixed_sender)),
            x_headers: self.x_header_names(),
            unparseable: self.unparseable,
            hostname: hostname.to_owned(),
        }
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
