//! `[queue]`: the on-disk spool and the retry schedule of deliveries.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Spool directory when neither `queue.dir` nor `$STATE_DIRECTORY` is set.
pub const DEFAULT_DIR: &str = "/var/spool/graph-relay";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Spool directory; default `$STATE_DIRECTORY`, else `/var/spool/graph-relay`
    /// (with `serve --dry-run DIR`: `DIR/.queue`). Always absolute once loaded.
    pub dir: Option<PathBuf>,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Wait before the second attempt; each further attempt waits twice as long.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest wait between two attempts.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            dir: None,
            concurrency: 4,
            retry_initial: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
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
        Ok(())
    }
}
