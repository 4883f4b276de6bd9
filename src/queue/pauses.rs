//! Throttling pauses that outlive the process: the end of each mailbox's Retry-After is kept in
//! `{queue.dir}/throttle-pauses`, so a relay restarted after a crash still waits it out instead
//! of calling a throttled mailbox at once (Graph counts early calls against the app).
//!
//! The file is replaced by rename, without fsync: it survives the process dying, which is what
//! it is for; after a power loss a pause may be forgotten, and Graph answers 429 again.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::scheduler::Lane;

/// Not `.json`, `.eml` or `.tmp`: the spool's recovery leaves other names alone.
const FILE: &str = "throttle-pauses";
const NEW: &str = "throttle-pauses.new";

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    profile: String,
    mailbox: String,
    until_ms: u64,
}

/// Where a spool's throttling pauses are kept.
#[derive(Debug, Clone)]
pub struct PauseFile {
    dir: PathBuf,
}

impl PauseFile {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// The pauses still running at `now_ms`. No file means none; an unreadable one is logged
    /// and means none too (Graph will say again).
    pub fn load(&self, now_ms: u64) -> Vec<(Lane, u64)> {
        let path = self.dir.join(FILE);
        let records: Vec<Record> = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(records) => records,
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "ignoring unreadable throttling pauses");
                    Vec::new()
                }
            },
            Err(err) if err.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot read throttling pauses");
                Vec::new()
            }
        };
        records
            .into_iter()
            .filter(|r| r.until_ms > now_ms)
            .map(|r| (Lane::new(&r.profile, &r.mailbox), r.until_ms))
            .collect()
    }

    /// Replaces the file with `pauses`: a crash leaves the old list or the new one.
    ///
    /// # Errors
    /// The file cannot be written or renamed.
    pub fn store(&self, pauses: &[(Lane, u64)]) -> io::Result<()> {
        let records: Vec<Record> = pauses
            .iter()
            .map(|(lane, until_ms)| Record {
                profile: lane.profile.to_string(),
                mailbox: lane.mailbox.to_string(),
                until_ms: *until_ms,
            })
            .collect();
        let new = self.dir.join(NEW);
        std::fs::write(&new, serde_json::to_vec(&records)?)?;
        std::fs::rename(&new, self.dir.join(FILE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_survive_a_new_process_and_run_out() {
        let dir = tempfile::tempdir().unwrap();
        let file = PauseFile::new(dir.path());
        assert!(file.load(0).is_empty(), "no file, no pauses");
        let a = Lane::new("[auth]", "A@contoso.com");
        let b = Lane::new("other", "b@contoso.com");
        file.store(&[(a.clone(), 2_000), (b, 1_000)]).unwrap();
        let again = PauseFile::new(dir.path());
        assert_eq!(again.load(1_000), [(a, 2_000)], "the one ended is dropped");
        assert!(again.load(2_000).is_empty());
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        assert!(again.load(0).is_empty(), "unreadable: no pauses");
    }
}
