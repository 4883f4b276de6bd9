//! `serve --dry-run DIR`: instead of calling Graph, each request that would be sent is written to
//! `DIR/<queue id>.json` as `{queue_id, method, path, content_type, body}`.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::queue::QueueId;

#[derive(Serialize)]
struct RecordedRequest<'a> {
    queue_id: QueueId,
    method: &'a str,
    path: &'a str,
    content_type: &'a str,
    body: serde_json::Value,
}

pub struct DryRunWriter {
    dir: PathBuf,
}

impl DryRunWriter {
    /// # Errors
    /// `dir` cannot be created.
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|err| std::io::Error::new(err.kind(), format!("{}: {err}", dir.display())))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Writes the request atomically (temp file, rename), owner-only.
    ///
    /// # Errors
    /// The file could not be written.
    pub fn write(&self, queue_id: QueueId, path: &str, body: &[u8]) -> std::io::Result<PathBuf> {
        let record = RecordedRequest {
            queue_id,
            method: "POST",
            path,
            content_type: "application/json",
            body: serde_json::from_slice(body)?,
        };
        let target = self.dir.join(format!("{queue_id}.json"));
        let tmp = self.dir.join(format!(".{queue_id}.json.tmp"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        serde_json::to_writer_pretty(&mut file, &record)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        Ok(target)
    }
}
