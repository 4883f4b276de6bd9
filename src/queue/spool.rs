//! The embedded on-disk spool: the source of truth between the SMTP `250` and Graph's `202`.
//!
//! Layout of `queue.dir`: one file per entry, `<id>.msg`: the message as received, then its
//! [`EntryMeta`], then a footer that commits it (`record`: a file without a whole footer was
//! never acknowledged). The `writer` thread writes the files of the commits that arrive
//! together and flushes them at once (one `syncfs` with `queue.sync = "filesystem"`; an fsync
//! per file and one of the directory with `file`); only then does SMTP answer `250`. Changes
//! after the commit (attempts, next attempt, last error, draft) go to `<id>.json` beside the
//! entry (temporary file, fsync, rename), which then takes precedence over the footer's copy.
//! Removed entry files become `<n>.spare`, emptied and reused for new messages (see
//! `writer::Spares` for why). Permanent failures move to `failed/` with their reason;
//! unreadable entries move to `corrupt/`; entries of the earlier two-file layout (`<id>.eml` +
//! `<id>.json`) are converted at open. Every step the durability rests on goes through
//! [`FileOps`], so a test can assert the order and crash at each.

mod record;
mod writer;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use crate::config::SyncMode;
use record::{FOOTER_LEN, Footer, RecordError};
use writer::{Emptying, Files, Job, Writer};

const ENTRY_EXT: &str = "msg";
const META_EXT: &str = "json";
const TMP_EXT: &str = "tmp";
/// An emptied entry file kept for reuse.
const SPARE_EXT: &str = "spare";
/// The message file of the two-file layout before [`record`]'s.
const LEGACY_BODY_EXT: &str = "eml";
const LOCK_FILE: &str = ".lock";
const FAILED_DIR: &str = "failed";
const CORRUPT_DIR: &str = "corrupt";

/// The id of one accepted message: a ULID, so ids sort by arrival and never repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct QueueId(ulid::Ulid);

impl QueueId {
    pub fn generate() -> Self {
        Self(ulid::Ulid::generate())
    }
}

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for QueueId {
    type Err = ulid::DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s).map(Self)
    }
}

/// What SMTP told us about a message: who sent it and who must receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The reverse-path; empty for `MAIL FROM:<>`.
    pub mail_from: String,
    /// Envelope recipients, de-duplicated case-insensitively, in the order given.
    pub rcpt_to: Vec<String>,
    /// Address of the SMTP client.
    pub client: String,
    /// Unix time in milliseconds when the message was acknowledged.
    pub received_at_ms: u64,
    /// Where the message came in and the mailbox chosen for it at DATA; absent in entries
    /// spooled before it was recorded and in the relay's own notices, whose sender is found
    /// from the message by `[graph]`'s setting. Boxed: a backlog of entries without it costs
    /// one pointer each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Box<Origin>>,
}

/// What the SMTP session knew of a message besides its envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The listener it came in on (`listen` for `smtp.listen`).
    pub listener: String,
    /// The SMTP user, when the client authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The mailbox to send as, by the sender setting in force for that listener and user.
    pub sender: String,
}

/// Everything the spool persists about one entry besides its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    pub id: QueueId,
    pub envelope: Envelope,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// Unix time in milliseconds of the next attempt.
    pub next_attempt_at_ms: u64,
    /// Why the last attempt did not deliver, or why the entry failed.
    pub last_error: Option<String>,
    /// The Graph draft of an upload in progress, written before its first upload so the
    /// orphan draft is deleted before a retry after a crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "spool {0} is in use by another graph-relay process; stop it or give this one its own queue.dir"
    )]
    Locked(PathBuf),
    #[error("spool entry {path} has unreadable metadata: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("spool entry {path} is damaged: {reason}; it cannot be sent")]
    Damaged { path: PathBuf, reason: RecordError },
    #[error("the spool's writer has stopped (the relay is shutting down)")]
    Stopped,
    #[error(
        "spool holds {used} bytes; {size} more would pass queue.max_size ({max}); new mail waits until deliveries make room"
    )]
    OverSize { used: u64, size: u64, max: u64 },
}

impl SpoolError {
    /// Spool I/O fails for reasons an operator must fix (disk full, permissions), and a full
    /// spool drains; a later attempt can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Io { .. } | Self::OverSize { .. } | Self::Stopped
        )
    }

    /// No room for new mail: the disk is full or the spool is over `queue.max_size`
    /// (SMTP answers `452 4.3.1`).
    pub fn is_full(&self) -> bool {
        match self {
            Self::OverSize { .. } => true,
            Self::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ),
            _ => false,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The file operations the spool's durability rests on. Each defaults to the real file system,
/// so a test double overrides only the operations it changes.
pub trait FileOps: Send + Sync {
    /// Creates a new owner-only file (fails if it exists).
    fn create(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
    }

    fn write(&self, file: &mut File, _path: &Path, bytes: &[u8]) -> io::Result<()> {
        file.write_all(bytes)
    }

    /// `fsync` of a file's content.
    fn sync(&self, file: &File, _path: &Path) -> io::Result<()> {
        // fdatasync: the size and block map of a new file are part of its data; timestamps
        // are not worth a second write.
        file.sync_data()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    /// `fsync` of a directory, making creations, renames and removals in it durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    /// `syncfs` of the filesystem holding `dir`: every write made before it is durable.
    fn sync_fs(&self, dir: &Path) -> io::Result<()> {
        rustix::fs::syncfs(File::open(dir)?).map_err(io::Error::from)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    /// Moves a finished entry file aside as `spare`; once emptied it is for
    /// [`reuse`](Self::reuse).
    fn recycle(&self, path: &Path, spare: &Path) -> io::Result<()> {
        self.rename(path, spare)
    }

    /// Renames an empty `spare` file to `path` and opens it for writing: a new entry without
    /// a new inode.
    fn reuse(&self, spare: &Path, path: &Path) -> io::Result<File> {
        self.rename(spare, path)?;
        OpenOptions::new().write(true).open(path)
    }
}

/// The real file system.
#[derive(Debug, Default)]
pub struct RealFs;

impl FileOps for RealFs {}

/// A message being received: its entry file is created with the first bytes written to it.
pub struct IncomingMessage {
    id: QueueId,
    file: Option<File>,
    path: PathBuf,
    size: u64,
    /// The checksum of what is written so far, finished by the footer.
    crc: crc32fast::Hasher,
}

impl IncomingMessage {
    pub fn id(&self) -> QueueId {
        self.id
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

/// The spool: one per `queue.dir`, held under an exclusive lock.
pub struct Spool {
    files: Files,
    failed_dir: PathBuf,
    /// Bytes of entry files in the live queue.
    used: AtomicU64,
    /// `queue.max_size`.
    max_size: Option<u64>,
    /// Started by the first asynchronous commit or removal, once `queue.sync` is set. Declared
    /// before the lock: dropping it finishes the pending writes while the lock is still held.
    writer: OnceLock<Writer>,
    /// Held for the life of the spool: one process per spool directory.
    _lock: File,
}

/// What a freshly opened spool found on disk.
pub struct Recovered {
    pub entries: Vec<EntryMeta>,
    /// Entry files without a commit footer, removed (their sender never got a `250`).
    pub orphans_removed: usize,
    /// Entries whose metadata could not be read, moved to `corrupt/`.
    pub quarantined: usize,
}

/// The ids of a directory's files, by extension.
#[derive(Default)]
struct Listing {
    entries: BTreeSet<QueueId>,
    metas: BTreeSet<QueueId>,
    legacy_bodies: BTreeSet<QueueId>,
    temporaries: Vec<PathBuf>,
    /// Spare files by number.
    spares: Vec<(u64, PathBuf)>,
}

impl Listing {
    fn of(dir: &Path) -> Result<Self, SpoolError> {
        let mut listing = Self::default();
        for dirent in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let path = dirent.map_err(io_err(dir))?.path();
            let id = path
                .file_stem()
                .and_then(|stem| stem.to_str()?.parse::<QueueId>().ok());
            let ids = match (path.extension().and_then(|ext| ext.to_str()), id) {
                (Some(ENTRY_EXT), Some(id)) => Some((&mut listing.entries, id)),
                (Some(META_EXT), Some(id)) => Some((&mut listing.metas, id)),
                (Some(LEGACY_BODY_EXT), Some(id)) => Some((&mut listing.legacy_bodies, id)),
                (Some(TMP_EXT), _) => {
                    listing.temporaries.push(path);
                    None
                }
                (Some(SPARE_EXT), _) => {
                    let number = path
                        .file_stem()
                        .and_then(|stem| stem.to_str()?.parse().ok());
                    if let Some(number) = number {
                        listing.spares.push((number, path));
                    }
                    None
                }
                _ => None,
            };
            if let Some((ids, id)) = ids {
                ids.insert(id);
            }
        }
        Ok(listing)
    }
}

/// Why an entry file's own metadata cannot be used.
enum TrailerError {
    /// Never completed, or completed but never flushed whole: remove it (unless its updated
    /// metadata says it was acknowledged).
    Uncommitted(RecordError),
    Corrupt(SpoolError),
    Io(SpoolError),
}

impl Spool {
    /// Opens (creating if needed) and locks the spool, and scans it for committed entries.
    ///
    /// # Errors
    /// The directory cannot be created or read, or another process holds the lock.
    pub fn open(dir: &Path) -> Result<(Self, Recovered), SpoolError> {
        Self::open_with(dir, Arc::new(RealFs))
    }

    pub fn open_with(dir: &Path, fs: Arc<dyn FileOps>) -> Result<(Self, Recovered), SpoolError> {
        let failed_dir = dir.join(FAILED_DIR);
        for path in [dir, failed_dir.as_path()] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(io_err(path))?;
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked(dir.into())),
            Err(std::fs::TryLockError::Error(err)) => return Err(io_err(&lock_path)(err)),
        }
        let spool = Self {
            files: Files {
                fs,
                dir: dir.to_path_buf(),
                mode: SyncMode::default(),
                spares: Arc::default(),
            },
            failed_dir,
            used: AtomicU64::new(0),
            max_size: None,
            writer: OnceLock::new(),
            _lock: lock,
        };
        let recovered = spool.recover()?;
        Ok((spool, recovered))
    }

    /// Limits the total size of queued entries (`queue.max_size`).
    pub fn with_max_size(mut self, max_size: Option<u64>) -> Self {
        self.max_size = max_size;
        self
    }

    /// Chooses how commits are flushed (`queue.sync`).
    pub fn with_sync(mut self, sync_mode: SyncMode) -> Self {
        self.files.mode = sync_mode;
        self
    }

    /// Does the writer's work on the calling task (tests on tokio's paused clock).
    #[cfg(test)]
    pub(crate) fn with_inline_writes(self) -> Self {
        let _ = self.writer.set(Writer::Inline(self.files.clone()));
        self
    }

    /// Bytes of entry files in the live queue.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn dir(&self) -> &Path {
        &self.files.dir
    }

    fn fs(&self) -> &dyn FileOps {
        self.files.fs.as_ref()
    }

    /// An entry's file: the message from its first byte (the upload path reads large
    /// attachments from it by offset), its metadata after.
    pub fn entry_path(&self, id: QueueId) -> PathBuf {
        self.dir().join(format!("{id}.{ENTRY_EXT}"))
    }

    fn meta_path(&self, id: QueueId) -> PathBuf {
        self.dir().join(format!("{id}.{META_EXT}"))
    }

    fn failed_path(&self, id: QueueId, ext: &str) -> PathBuf {
        self.failed_dir.join(format!("{id}.{ext}"))
    }

    fn writer(&self) -> &Writer {
        self.writer
            .get_or_init(|| Writer::spawn(self.files.clone()))
    }

    /// Loads committed entries; removes uncommitted leftovers; quarantines corrupt ones;
    /// finishes a move to or from `failed/` that a crash interrupted.
    fn recover(&self) -> Result<Recovered, SpoolError> {
        self.convert_legacy(&self.failed_dir)?;
        self.convert_legacy(self.dir())?;
        let failed = Listing::of(&self.failed_dir)?;
        // Metadata left in failed/ by a requeue or deletion that did not finish.
        for id in failed.metas.difference(&failed.entries) {
            let path = self.failed_path(*id, META_EXT);
            self.fs().remove(&path).map_err(io_err(&path))?;
        }
        let live = Listing::of(self.dir())?;
        let mut recovered = Recovered {
            entries: Vec::with_capacity(live.entries.len()),
            orphans_removed: 0,
            quarantined: 0,
        };
        let mut used = 0;
        for &id in &live.entries {
            let path = self.entry_path(id);
            let updated = live.metas.contains(&id);
            let trailer = read_trailer(&path);
            let meta = match (trailer, updated) {
                // Another entry's record in this entry's file: a reused spare whose emptying
                // had not reached the disk before a crash, so never this entry's commit.
                (Ok((meta, _)), false) if meta.id != id => {
                    self.fs().remove(&path).map_err(io_err(&path))?;
                    recovered.orphans_removed += 1;
                    continue;
                }
                (Ok((meta, size)), false) => Ok((meta, size)),
                (Ok((_, size)), true) => read_meta(&self.meta_path(id)).map(|meta| (meta, size)),
                (Err(TrailerError::Uncommitted(_)), false) => {
                    self.fs().remove(&path).map_err(io_err(&path))?;
                    recovered.orphans_removed += 1;
                    continue;
                }
                (Err(TrailerError::Uncommitted(reason)), true) => Err(SpoolError::Damaged {
                    path: path.clone(),
                    reason,
                }),
                (Err(TrailerError::Corrupt(err)), _) => Err(err),
                (Err(TrailerError::Io(err)), _) => return Err(err),
            };
            match meta {
                Ok((meta, size)) if meta.id == id => {
                    used += size;
                    recovered.entries.push(meta);
                }
                other => {
                    let error = other.err().map_or_else(
                        || "its metadata names another entry".to_owned(),
                        |err| err.to_string(),
                    );
                    tracing::error!(queue_id = %id, %error, "quarantining spool entry");
                    self.quarantine(id)?;
                    recovered.quarantined += 1;
                }
            }
        }
        for &id in live.metas.difference(&live.entries) {
            let path = self.meta_path(id);
            let failed_entry = self.failed_path(id, ENTRY_EXT);
            // A crash inside `fail` after the entry moved, before its metadata followed.
            if failed_entry.exists() && !self.failed_path(id, META_EXT).exists() {
                match read_meta(&path) {
                    Ok(meta) => self.write_meta(&self.failed_dir, &meta)?,
                    Err(err) => {
                        tracing::error!(queue_id = %id, error = %err, "quarantining spool entry");
                        self.quarantine(id)?;
                        recovered.quarantined += 1;
                        continue;
                    }
                }
            }
            // Otherwise left by a removal, a finished `fail` or an unfinished requeue.
            self.fs().remove(&path).map_err(io_err(&path))?;
        }
        // A temporary metadata file was never renamed: its update did not happen.
        for path in &live.temporaries {
            self.fs().remove(path).map_err(io_err(path))?;
        }
        self.files.spares.adopt(live.spares, self.fs())?;
        self.used.store(used, Ordering::Relaxed);
        Ok(recovered)
    }

    /// Converts the entries of the earlier two-file layout in `dir` (`<id>.eml`, the message,
    /// and `<id>.json`, its metadata) into entry files; the metadata stays as the entry's
    /// update. The old message is removed only once its entry file is durable, so a crash
    /// midway converts it again at the next start.
    fn convert_legacy(&self, dir: &Path) -> Result<(), SpoolError> {
        let listing = Listing::of(dir)?;
        for &id in &listing.legacy_bodies {
            let body_path = dir.join(format!("{id}.{LEGACY_BODY_EXT}"));
            let meta_path = dir.join(format!("{id}.{META_EXT}"));
            if !listing.metas.contains(&id) {
                if dir == self.dir() {
                    // It was never committed.
                    self.fs().remove(&body_path).map_err(io_err(&body_path))?;
                } else {
                    tracing::warn!(path = %body_path.display(), "failed message of an earlier version without its metadata; left as it is");
                }
                continue;
            }
            let meta = match read_meta(&meta_path) {
                Ok(meta) => meta,
                Err(err) => {
                    tracing::error!(queue_id = %id, error = %err, "quarantining spool entry");
                    self.move_to_corrupt(&[body_path, meta_path])?;
                    continue;
                }
            };
            let body = std::fs::read(&body_path).map_err(io_err(&body_path))?;
            let mut crc = crc32fast::Hasher::new();
            crc.update(&body);
            let mut bytes = body;
            record::finish(&mut bytes, crc, &meta_json(&meta));
            let entry_path = dir.join(format!("{id}.{ENTRY_EXT}"));
            let _ = std::fs::remove_file(&entry_path);
            let mut file = self.fs().create(&entry_path).map_err(io_err(&entry_path))?;
            self.fs()
                .write(&mut file, &entry_path, &bytes)
                .and_then(|()| self.fs().sync(&file, &entry_path))
                .and_then(|()| self.fs().sync_dir(dir))
                .and_then(|()| self.fs().remove(&body_path))
                .map_err(io_err(&entry_path))?;
        }
        if !listing.legacy_bodies.is_empty() {
            tracing::info!(
                entries = listing.legacy_bodies.len(),
                dir = %dir.display(),
                "converted spool entries of an earlier version"
            );
        }
        Ok(())
    }

    /// Moves an entry's files aside, so they never stop the daemon.
    fn quarantine(&self, id: QueueId) -> Result<(), SpoolError> {
        self.move_to_corrupt(&[self.entry_path(id), self.meta_path(id)])
    }

    fn move_to_corrupt(&self, paths: &[PathBuf]) -> Result<(), SpoolError> {
        let corrupt = self.dir().join(CORRUPT_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&corrupt)
            .map_err(io_err(&corrupt))?;
        for path in paths {
            if let Some(name) = path.file_name().filter(|_| path.exists()) {
                self.fs()
                    .rename(path, &corrupt.join(name))
                    .map_err(io_err(path))?;
            }
        }
        self.fs().sync_dir(&corrupt).map_err(io_err(&corrupt))?;
        self.fs().sync_dir(self.dir()).map_err(io_err(self.dir()))
    }

    /// Starts receiving a message under a new id; its file is created by the first write.
    pub fn receive(&self) -> IncomingMessage {
        let id = QueueId::generate();
        IncomingMessage {
            id,
            file: None,
            path: self.entry_path(id),
            size: 0,
            crc: crc32fast::Hasher::new(),
        }
    }

    /// Appends received bytes to the entry file (a large message streams to disk as it comes).
    ///
    /// # Errors
    /// The write failed; the caller should [`abort`](Self::abort) the message.
    pub fn append(&self, incoming: &mut IncomingMessage, bytes: &[u8]) -> Result<(), SpoolError> {
        let file = match &mut incoming.file {
            Some(file) => file,
            None => incoming
                .file
                .insert(self.files.create_entry(&incoming.path)?),
        };
        self.fs()
            .write(file, &incoming.path, bytes)
            .map_err(io_err(&incoming.path))?;
        incoming.crc.update(bytes);
        incoming.size += bytes.len() as u64;
        Ok(())
    }

    /// What a commit writes after the bytes already in the file (`tail`, then the metadata
    /// and the footer), with the entry's metadata; the entry's size counts against
    /// `queue.max_size` from here.
    fn prepare(
        &self,
        incoming: &mut IncomingMessage,
        mut tail: Vec<u8>,
        envelope: Envelope,
    ) -> Result<(EntryMeta, Vec<u8>, u64), SpoolError> {
        let meta = EntryMeta {
            id: incoming.id,
            envelope,
            attempts: 0,
            next_attempt_at_ms: now_ms(),
            last_error: None,
            draft_id: None,
        };
        let mut crc = std::mem::take(&mut incoming.crc);
        crc.update(&tail);
        record::finish(&mut tail, crc, &meta_json(&meta));
        let size = incoming.size + tail.len() as u64;
        let used = self.used.fetch_add(size, Ordering::Relaxed);
        if let Some(max) = self.max_size
            && used + size > max
        {
            self.used.fetch_sub(size, Ordering::Relaxed);
            return Err(SpoolError::OverSize { used, size, max });
        }
        Ok((meta, tail, size))
    }

    /// Makes the message durable with its own flush; after this returns it may be acknowledged.
    /// SMTP sessions use [`commit_async`](Self::commit_async), which shares flushes.
    ///
    /// # Errors
    /// Any step failed; nothing was committed and the file is removed.
    pub fn commit(
        &self,
        mut incoming: IncomingMessage,
        envelope: Envelope,
    ) -> Result<EntryMeta, SpoolError> {
        let (meta, tail, size) = match self.prepare(&mut incoming, Vec::new(), envelope) {
            Ok(prepared) => prepared,
            Err(err) => {
                self.abort(incoming);
                return Err(err);
            }
        };
        let path = incoming.path;
        let written = self
            .files
            .write_entry(&path, incoming.file, &tail)
            .and_then(|()| self.files.flush());
        if let Err(err) = written {
            self.used.fetch_sub(size, Ordering::Relaxed);
            self.files.discard(&path);
            return Err(err);
        }
        Ok(meta)
    }

    /// Commits the message with `tail` (the body bytes not written yet) on the writer thread,
    /// sharing its flush with every commit and removal that arrives meanwhile; resolves once
    /// the message is durable and may be acknowledged.
    ///
    /// # Errors
    /// Any step failed; nothing was committed and the file is removed.
    pub async fn commit_async(
        &self,
        mut incoming: IncomingMessage,
        tail: Vec<u8>,
        envelope: Envelope,
    ) -> Result<EntryMeta, SpoolError> {
        let (meta, bytes, size) = match self.prepare(&mut incoming, tail, envelope) {
            Ok(prepared) => prepared,
            Err(err) => {
                self.abort(incoming);
                return Err(err);
            }
        };
        let (reply, answer) = oneshot::channel();
        self.writer().submit(Job::Commit {
            path: incoming.path,
            file: incoming.file,
            bytes,
            reply,
        });
        let result = answer.await.unwrap_or(Err(SpoolError::Stopped));
        if result.is_err() {
            self.used.fetch_sub(size, Ordering::Relaxed);
        }
        result.map(|()| meta)
    }

    /// Drops a message that will not be acknowledged.
    pub fn abort(&self, incoming: IncomingMessage) {
        if let Some(file) = incoming.file {
            drop(file);
            self.files.discard(&incoming.path);
        }
    }

    /// Writes `meta` into `dir` atomically: temp file, fsync, rename, fsync the directory.
    fn write_meta(&self, dir: &Path, meta: &EntryMeta) -> Result<(), SpoolError> {
        let final_path = dir.join(format!("{}.{META_EXT}", meta.id));
        let tmp_path = dir.join(format!("{}.{TMP_EXT}", meta.id));
        // The temp file of an earlier write that crashed would block `create_new`.
        let _ = std::fs::remove_file(&tmp_path);
        let mut file = self.fs().create(&tmp_path).map_err(io_err(&tmp_path))?;
        let written = self
            .fs()
            .write(&mut file, &tmp_path, &meta_json(meta))
            .and_then(|()| self.fs().sync(&file, &tmp_path))
            .and_then(|()| self.fs().rename(&tmp_path, &final_path));
        if let Err(err) = written {
            drop(file);
            let _ = self.fs().remove(&tmp_path);
            return Err(io_err(&tmp_path)(err));
        }
        self.fs().sync_dir(dir).map_err(io_err(dir))
    }

    /// Persists a changed entry (attempt count, next attempt, last error, draft).
    ///
    /// # Errors
    /// The metadata could not be rewritten; the previous version stays in place.
    pub fn update(&self, meta: &EntryMeta) -> Result<(), SpoolError> {
        self.write_meta(self.dir(), meta)
    }

    /// Reads a message, checking it is the whole message that was acknowledged.
    ///
    /// # Errors
    /// The entry file is missing, unreadable or damaged.
    pub fn read_body(&self, id: QueueId) -> Result<Vec<u8>, SpoolError> {
        let (file, len, path) = self.open_entry(id)?;
        read_message(file, len, &path)
    }

    /// An entry file opened for reading, with its length (one path lookup for both).
    fn open_entry(&self, id: QueueId) -> Result<(File, u64, PathBuf), SpoolError> {
        let path = self.entry_path(id);
        let file = File::open(&path).map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        Ok((file, len, path))
    }

    /// [`read_body`](Self::read_body) for async callers: a small entry is read on the calling
    /// task (a few microseconds from the page cache, cheaper than the hop to a blocking
    /// thread and back), a large one on a blocking thread.
    ///
    /// # Errors
    /// The entry file is missing, unreadable or damaged.
    pub async fn read_body_async(&self, id: QueueId) -> Result<Vec<u8>, SpoolError> {
        const INLINE_READ_LIMIT: u64 = 256 * 1024;
        let (file, len, path) = self.open_entry(id)?;
        if len <= INLINE_READ_LIMIT {
            return read_message(file, len, &path);
        }
        let on_thread = path.clone();
        let read = tokio::task::spawn_blocking(move || read_message(file, len, &on_thread));
        read.await
            .unwrap_or_else(|join| Err(io_err(&path)(io::Error::other(join.to_string()))))
    }

    /// Removes a delivered entry with its own flush (the `queue delete` command);
    /// deliveries use [`remove_async`](Self::remove_async).
    ///
    /// # Errors
    /// A file could not be removed.
    pub fn remove(&self, id: QueueId) -> Result<(), SpoolError> {
        let size =
            self.files
                .unlink_entry(&self.entry_path(id), &self.meta_path(id), Emptying::Now)?;
        self.forget(size);
        self.files.flush()
    }

    /// Removes a finished entry on the writer thread, sharing its flush; a crash before the
    /// flush may leave it to be sent again, never half removed.
    ///
    /// # Errors
    /// A file could not be removed, or the removal not flushed.
    pub async fn remove_async(&self, id: QueueId) -> Result<(), SpoolError> {
        let (reply, answer) = oneshot::channel();
        self.writer().submit(Job::Remove {
            entry: self.entry_path(id),
            meta: self.meta_path(id),
            reply,
        });
        let size = answer.await.unwrap_or(Err(SpoolError::Stopped))?;
        self.forget(size);
        Ok(())
    }

    /// An entry file of `size` bytes left the live queue.
    fn forget(&self, size: u64) {
        self.used
            .fetch_sub(size.min(self.used()), Ordering::Relaxed);
    }

    /// Moves an entry to `failed/` with the reason in its metadata: the metadata first (alone
    /// it is a leftover, removed at the next start), then the entry file.
    ///
    /// # Errors
    /// The move could not be completed; the entry stays in the live queue.
    pub fn fail(&self, meta: &EntryMeta) -> Result<(), SpoolError> {
        self.write_meta(&self.failed_dir, meta)?;
        let entry = self.entry_path(meta.id);
        let failed_entry = self.failed_path(meta.id, ENTRY_EXT);
        let size = std::fs::symlink_metadata(&entry).map_or(0, |m| m.len());
        self.fs()
            .rename(&entry, &failed_entry)
            .map_err(io_err(&entry))?;
        self.forget(size);
        let live_meta = self.meta_path(meta.id);
        match self.fs().remove(&live_meta) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                return Err(io_err(&live_meta)(err));
            }
            _ => {}
        }
        self.fs().sync_dir(self.dir()).map_err(io_err(self.dir()))?;
        self.fs()
            .sync_dir(&self.failed_dir)
            .map_err(io_err(&self.failed_dir))
    }

    /// Moves a failed entry back into the live queue, due now (an operator's retry).
    ///
    /// # Errors
    /// The entry is not in `failed/`, or a file operation failed (the entry stays failed).
    pub fn requeue(&self, id: QueueId) -> Result<EntryMeta, SpoolError> {
        let failed_meta = self.failed_path(id, META_EXT);
        let mut meta = read_meta(&failed_meta)?;
        meta.next_attempt_at_ms = now_ms();
        // The live metadata comes first: until the entry file is back, recovery keeps the
        // entry failed, so a crash never orphans it.
        let failed_entry = self.failed_path(id, ENTRY_EXT);
        let entry = self.entry_path(id);
        self.write_meta(self.dir(), &meta)?;
        self.fs()
            .rename(&failed_entry, &entry)
            .map_err(io_err(&failed_entry))?;
        self.fs().sync_dir(self.dir()).map_err(io_err(self.dir()))?;
        self.fs()
            .remove(&failed_meta)
            .map_err(io_err(&failed_meta))?;
        self.fs()
            .sync_dir(&self.failed_dir)
            .map_err(io_err(&self.failed_dir))?;
        self.used.fetch_add(
            std::fs::symlink_metadata(&entry).map_or(0, |m| m.len()),
            Ordering::Relaxed,
        );
        Ok(meta)
    }

    /// Deletes an entry from `failed/`; `false` when there is none with this id.
    ///
    /// # Errors
    /// A file could not be removed.
    pub fn delete_failed(&self, id: QueueId) -> Result<bool, SpoolError> {
        let meta = self.failed_path(id, META_EXT);
        if !meta.exists() {
            return Ok(false);
        }
        // The entry file first: metadata alone is a leftover, removed at the next start.
        let entry = self.failed_path(id, ENTRY_EXT);
        self.fs().remove(&entry).map_err(io_err(&entry))?;
        self.fs().remove(&meta).map_err(io_err(&meta))?;
        self.fs()
            .sync_dir(&self.failed_dir)
            .map_err(io_err(&self.failed_dir))?;
        Ok(true)
    }

    /// How many entries `failed/` holds, without reading them (the queue gauges ask often).
    ///
    /// # Errors
    /// `failed/` cannot be read.
    pub fn failed_count(&self) -> Result<usize, SpoolError> {
        Ok(Listing::of(&self.failed_dir)?.metas.len())
    }

    /// Entries in `failed/`, oldest first.
    ///
    /// # Errors
    /// `failed/` cannot be read.
    pub fn failed_entries(&self) -> Result<Vec<EntryMeta>, SpoolError> {
        Listing::of(&self.failed_dir)?
            .metas
            .iter()
            .map(|id| read_meta(&self.failed_path(*id, META_EXT)))
            .collect()
    }
}

fn meta_json(meta: &EntryMeta) -> Vec<u8> {
    serde_json::to_vec(meta).expect("entry metadata always serialises")
}

/// The metadata in an entry file's footer, and the file's size, once the whole file is checked
/// against the footer's checksum (a crash before the flush can leave a footer on disk without
/// all of the message), reading it in bounded chunks.
fn read_trailer(path: &Path) -> Result<(EntryMeta, u64), TrailerError> {
    const CHUNK: u64 = 256 * 1024;
    let io = |err| TrailerError::Io(io_err(path)(err));
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    if len < FOOTER_LEN as u64 {
        return Err(TrailerError::Uncommitted(RecordError::NoFooter));
    }
    let covered = len - FOOTER_LEN as u64;
    let mut footer = [0; FOOTER_LEN];
    file.read_exact_at(&mut footer, covered).map_err(io)?;
    let footer = Footer::parse(&footer, len).map_err(TrailerError::Uncommitted)?;
    let mut crc = crc32fast::Hasher::new();
    let mut chunk = vec![0; CHUNK.min(covered) as usize];
    let mut at = 0;
    while at < covered {
        let part = &mut chunk[..CHUNK.min(covered - at) as usize];
        file.read_exact_at(part, at).map_err(io)?;
        crc.update(part);
        at += part.len() as u64;
    }
    if crc.finalize() != footer.crc {
        return Err(TrailerError::Uncommitted(RecordError::Checksum));
    }
    let mut json = vec![0; footer.json_len as usize];
    file.read_exact_at(&mut json, footer.body_len(len))
        .map_err(io)?;
    let meta = serde_json::from_slice(&json).map_err(|source| {
        TrailerError::Corrupt(SpoolError::Corrupt {
            path: path.to_path_buf(),
            source,
        })
    })?;
    Ok((meta, len))
}

/// The message of an entry file (open, `len` bytes), checked against its footer.
fn read_message(mut file: File, len: u64, path: &Path) -> Result<Vec<u8>, SpoolError> {
    let mut bytes = Vec::with_capacity(len as usize);
    io::Read::read_to_end(&mut file, &mut bytes).map_err(io_err(path))?;
    let body_len = record::split(&bytes)
        .map_err(|reason| SpoolError::Damaged {
            path: path.to_path_buf(),
            reason,
        })?
        .0
        .len();
    bytes.truncate(body_len);
    Ok(bytes)
}

fn read_meta(path: &Path) -> Result<EntryMeta, SpoolError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|source| SpoolError::Corrupt {
        path: path.to_path_buf(),
        source,
    })
}

/// Wall-clock time in Unix milliseconds, as persisted in the spool.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests;
