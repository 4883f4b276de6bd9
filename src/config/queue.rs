//! `[queue]`: the on-disk spool and the retry schedule of deliveries.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Spool directory when neither `queue.dir` nor `$STATE_DIRECTORY` is set.
pub const DEFAULT_DIR: &str = "/var/spool/graph-relay";

/// When SMTP answers the end of a message: before or after Graph has taken it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// `250` once the message is on disk; Graph is tried afterwards, with retries.
    #[default]
    Queued,
    /// `250` only after Graph's `202`; a temporary failure answers `451` (the message is not
    /// kept: the client sends it again), a refusal `554`.
    Synchronous,
    /// Waits up to `queue.ack_wait` for the first attempt: delivered `250`, refused `554`,
    /// anything else `250` with the message kept queued and retried.
    Hybrid,
}

/// How the spool makes an accepted message durable before its `250`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// One `syncfs` of the spool's filesystem covers every message that arrived meanwhile:
    /// the fastest, but it also flushes other programs' writes on that filesystem, so give
    /// `queue.dir` a filesystem of its own where other heavy writers share it.
    #[default]
    Filesystem,
    /// `fsync` of each message's files (directory flushes still shared): one device flush per
    /// message, unaffected by other writers; for filesystems where `syncfs` is not a flush.
    File,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Spool directory; default `$STATE_DIRECTORY`, else `/var/spool/graph-relay`
    /// (with `serve --dry-run DIR`: `DIR/.queue`). Always absolute once loaded.
    pub dir: Option<PathBuf>,
    /// Deliveries in flight at once, across all mailboxes; Graph takes 4 per mailbox, so the
    /// default covers 32 sending mailboxes at Graph's limit.
    pub concurrency: usize,
    /// Wait before the second attempt; each further attempt waits twice as long.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest wait between two attempts.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Requests in flight at once per (authentication profile, mailbox): Graph allows 4.
    pub mailbox_concurrency: usize,
    /// A message not delivered this long after it was accepted fails (and is reported).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// While a configuration fault (permissions, licence, credentials) pauses a mailbox or
    /// profile, one message tries again this often; permission changes take 30 min to 2 h.
    #[serde(with = "humantime_serde")]
    pub fault_retry: Duration,
    /// Largest total size of the queue's entries in bytes (each message plus a few hundred
    /// bytes of envelope); beyond it new mail gets `452 4.3.1`. Unset: limited only by the disk.
    pub max_size: Option<u64>,
    /// `filesystem` or `file`: how an accepted message is flushed to disk before its `250`.
    pub sync: SyncMode,
    /// After SIGTERM, how long open sessions and deliveries in flight get to finish
    /// (under Kubernetes' 30 s); a second signal exits at once.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// `queued`, `synchronous` or `hybrid`: whether the answer to a message waits for Graph.
    pub ack_mode: AckMode,
    /// In `hybrid` mode, how long the answer waits for the first attempt before the message is
    /// acknowledged as queued. (`synchronous` waits up to `smtp.data_timeout`.)
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// When set, the envelope sender of each message moved to `failed/` gets a delivery status
    /// notification (RFC 3464) sent from this mailbox through Graph; never for `MAIL FROM:<>`.
    pub dsn_from: Option<String>,
    /// Requests per minute per (profile, mailbox); unset: no pacing. Exchange Online documents
    /// 30 messages per minute per mailbox.
    pub mailbox_messages_per_minute: Option<u32>,
    /// Recipients per rolling 24 hours per (profile, mailbox); unset: no pacing. Exchange Online
    /// documents 10,000 recipients per day per mailbox.
    pub mailbox_recipients_per_day: Option<u64>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            dir: None,
            concurrency: 128,
            retry_initial: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            mailbox_concurrency: 4,
            max_age: Duration::from_secs(2 * 24 * 3600),
            fault_retry: Duration::from_secs(300),
            max_size: None,
            sync: SyncMode::Filesystem,
            shutdown_grace: Duration::from_secs(25),
            ack_mode: AckMode::Queued,
            ack_wait: Duration::from_secs(5),
            dsn_from: None,
            mailbox_messages_per_minute: None,
            mailbox_recipients_per_day: None,
        }
    }
}

impl QueueConfig {
    /// The spool directory (resolved to an absolute path by `Config::load`).
    pub fn dir(&self) -> &Path {
        self.dir.as_deref().unwrap_or(Path::new(DEFAULT_DIR))
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.concurrency == 0 {
            return Err(ConfigError::new("queue.concurrency", "must be at least 1"));
        }
        if self.retry_initial.is_zero() {
            return Err(ConfigError::new(
                "queue.retry_initial",
                "must be longer than 0s",
            ));
        }
        if self.retry_max < self.retry_initial {
            return Err(ConfigError::new(
                "queue.retry_max",
                "must not be shorter than queue.retry_initial",
            ));
        }
        if self.mailbox_concurrency == 0 {
            return Err(ConfigError::new(
                "queue.mailbox_concurrency",
                "must be at least 1",
            ));
        }
        if self.max_age < self.retry_max {
            return Err(ConfigError::new(
                "queue.max_age",
                "must not be shorter than queue.retry_max",
            ));
        }
        if self.fault_retry.is_zero() {
            return Err(ConfigError::new(
                "queue.fault_retry",
                "must be longer than 0s",
            ));
        }
        if self.max_size == Some(0) {
            return Err(ConfigError::new(
                "queue.max_size",
                "must be more than 0 bytes (leave it unset for no limit)",
            ));
        }
        if self.ack_wait.is_zero() {
            return Err(ConfigError::new("queue.ack_wait", "must be longer than 0s"));
        }
        if self.mailbox_messages_per_minute == Some(0) {
            return Err(ConfigError::new(
                "queue.mailbox_messages_per_minute",
                "must be at least 1 (leave it unset for no pacing)",
            ));
        }
        if self.mailbox_recipients_per_day == Some(0) {
            return Err(ConfigError::new(
                "queue.mailbox_recipients_per_day",
                "must be at least 1 (leave it unset for no pacing)",
            ));
        }
        if let Some(from) = &self.dsn_from
            && !crate::queue::dsn::is_plain_address(from)
        {
            return Err(ConfigError::new(
                "queue.dsn_from",
                "must be a plain mailbox address such as postmaster@contoso.com",
            ));
        }
        Ok(())
    }
}
