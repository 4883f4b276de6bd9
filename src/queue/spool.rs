//! The embedded on-disk spool: the source of truth between the SMTP `250` and Graph's `202`.
//!
//! Layout of `queue.dir`: `<id>.eml` (the message as received) and `<id>.json` (its [`EntryMeta`]).
//! The `.json` file is the commit marker, written last: body written and fsync'd, meta written to a
//! temporary file and fsync'd, renamed into place, directory fsync'd. Only then does SMTP answer
//! `250`. With `queue.sync = "filesystem"` the per-file fsyncs give way to two grouped `syncfs`
//! calls (bodies, then commit markers), each shared by every message that arrived meanwhile.
//! Permanent failures move to `failed/` with their reason; unreadable metadata moves to
//! `corrupt/`. Every file operation goes through [`FileOps`], so a test can assert the order.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use crate::config::SyncMode;

const BODY_EXT: &str = "eml";
const META_EXT: &str = "json";
const TMP_EXT: &str = "tmp";
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
    #[error(
        "spool holds {used} bytes; {size} more would pass queue.max_size ({max}); new mail waits until deliveries make room"
    )]
    OverSize { used: u64, size: u64, max: u64 },
}

impl SpoolError {
    /// Spool I/O fails for reasons an operator must fix (disk full, permissions), and a full
    /// spool drains; a later attempt can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Io { .. } | Self::OverSize { .. })
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

/// The file operations the spool's durability rests on.
pub trait FileOps: Send + Sync {
    /// Creates a new owner-only file (fails if it exists).
    fn create(&self, path: &Path) -> io::Result<File>;
    fn write(&self, file: &mut File, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// `fsync` of a file's content.
    fn sync(&self, file: &File, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// `fsync` of a directory, making creations, renames and removals in it durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// `syncfs` of the filesystem holding `dir`: every write made before it is durable.
    fn sync_fs(&self, dir: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default)]
pub struct RealFs;

impl FileOps for RealFs {
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

    fn sync(&self, file: &File, _path: &Path) -> io::Result<()> {
        // fdatasync: the size and block map of a new file are part of its data; timestamps
        // are not worth a second write.
        file.sync_data()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn sync_fs(&self, dir: &Path) -> io::Result<()> {
        rustix::fs::syncfs(File::open(dir)?).map_err(io::Error::from)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
}

/// A message being received: its body file is open and growing.
pub struct IncomingMessage {
    id: QueueId,
    file: File,
    path: PathBuf,
    size: u64,
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
    dir: PathBuf,
    failed_dir: PathBuf,
    fs: Arc<dyn FileOps>,
    /// Bytes of message bodies in the live queue.
    used: AtomicU64,
    /// `queue.max_size`.
    max_size: Option<u64>,
    /// `queue.sync`.
    sync_mode: SyncMode,
    /// Commits that arrive together share one flush.
    dir_sync: DirSync,
    /// Held for the life of the spool: one process per spool directory.
    _lock: File,
}

/// Group commit: each committer (or remover) takes a ticket after its writes; one of them
/// flushes (directory fsync or syncfs) for every ticket issued before the flush started, the
/// others wait for it. No commit returns before a flush that began after its writes.
#[derive(Default)]
struct DirSync {
    state: Mutex<DirSyncState>,
    done: Condvar,
}

#[derive(Default)]
struct DirSyncState {
    issued: u64,
    synced: u64,
    syncing: bool,
}

/// What a freshly opened spool found on disk.
pub struct Recovered {
    pub entries: Vec<EntryMeta>,
    /// Bodies without a commit marker, removed (their sender never got a `250`).
    pub orphans_removed: usize,
    /// Entries whose metadata could not be read, moved to `corrupt/`.
    pub quarantined: usize,
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
            dir: dir.to_path_buf(),
            failed_dir,
            fs,
            used: AtomicU64::new(0),
            max_size: None,
            sync_mode: SyncMode::default(),
            dir_sync: DirSync::default(),
            _lock: lock,
        };
        let recovered = spool.recover()?;
        let used = recovered
            .entries
            .iter()
            .map(|meta| body_size(&spool.body_path(meta.id)))
            .sum();
        spool.used.store(used, Ordering::Relaxed);
        Ok((spool, recovered))
    }

    /// Limits the total size of queued bodies (`queue.max_size`).
    pub fn with_max_size(mut self, max_size: Option<u64>) -> Self {
        self.max_size = max_size;
        self
    }

    /// Chooses how commits are flushed (`queue.sync`).
    pub fn with_sync(mut self, sync_mode: SyncMode) -> Self {
        self.sync_mode = sync_mode;
        self
    }

    /// Bytes of message bodies in the live queue.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where an entry's body is (the upload path reads large attachments from it).
    pub fn body_path(&self, id: QueueId) -> PathBuf {
        self.dir.join(format!("{id}.{BODY_EXT}"))
    }

    fn meta_path(&self, id: QueueId) -> PathBuf {
        self.dir.join(format!("{id}.{META_EXT}"))
    }

    /// Loads committed entries; removes uncommitted leftovers; quarantines corrupt metadata.
    fn recover(&self) -> Result<Recovered, SpoolError> {
        let mut entries = Vec::new();
        let mut bodies = Vec::new();
        let mut orphans_removed = 0;
        let mut quarantined = 0;
        for dirent in std::fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let path = dirent.map_err(io_err(&self.dir))?.path();
            match path.extension().and_then(|ext| ext.to_str()) {
                Some(META_EXT) => match read_meta(&path) {
                    // A crash inside `fail` after the body moved: finish the move.
                    Ok(meta)
                        if !self.body_path(meta.id).exists()
                            && self
                                .failed_dir
                                .join(format!("{}.{BODY_EXT}", meta.id))
                                .exists() =>
                    {
                        self.write_meta(&self.failed_dir, &meta)?;
                        self.fs.remove(&path).map_err(io_err(&path))?;
                    }
                    Ok(meta) if !self.body_path(meta.id).exists() => {
                        tracing::error!(queue_id = %meta.id, "quarantining spool entry without a body");
                        self.quarantine(&path)?;
                        quarantined += 1;
                    }
                    Ok(meta) => entries.push(meta),
                    Err(err) => {
                        tracing::error!(error = %err, "quarantining spool entry");
                        self.quarantine(&path)?;
                        quarantined += 1;
                    }
                },
                Some(BODY_EXT) => bodies.push(path),
                // A temporary meta file was never renamed: its commit did not happen.
                Some(TMP_EXT) => {
                    self.fs.remove(&path).map_err(io_err(&path))?;
                }
                _ => {}
            }
        }
        for body in bodies {
            if !body.with_extension(META_EXT).exists() && !self.is_quarantined(&body) {
                self.fs.remove(&body).map_err(io_err(&body))?;
                orphans_removed += 1;
            }
        }
        entries.sort_by_key(|meta| meta.id);
        Ok(Recovered {
            entries,
            orphans_removed,
            quarantined,
        })
    }

    fn is_quarantined(&self, body: &Path) -> bool {
        body.file_name()
            .is_some_and(|name| self.dir.join(CORRUPT_DIR).join(name).exists())
    }

    /// Moves a corrupt meta file and its body aside, so they never stop the daemon.
    fn quarantine(&self, meta: &Path) -> Result<(), SpoolError> {
        let corrupt = self.dir.join(CORRUPT_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&corrupt)
            .map_err(io_err(&corrupt))?;
        for path in [meta.to_path_buf(), meta.with_extension(BODY_EXT)] {
            if let Some(name) = path.file_name().filter(|_| path.exists()) {
                self.fs
                    .rename(&path, &corrupt.join(name))
                    .map_err(io_err(&path))?;
            }
        }
        self.fs.sync_dir(&corrupt).map_err(io_err(&corrupt))?;
        self.fs.sync_dir(&self.dir).map_err(io_err(&self.dir))
    }

    /// Starts receiving a message: creates its body file under a new id.
    ///
    /// # Errors
    /// The body file cannot be created (disk full, permissions).
    pub fn receive(&self) -> Result<IncomingMessage, SpoolError> {
        let id = QueueId::generate();
        let path = self.body_path(id);
        let file = self.fs.create(&path).map_err(io_err(&path))?;
        Ok(IncomingMessage {
            id,
            file,
            path,
            size: 0,
        })
    }

    /// Appends received bytes to the body.
    ///
    /// # Errors
    /// The write failed; the caller should [`abort`](Self::abort) the message.
    pub fn append(&self, incoming: &mut IncomingMessage, bytes: &[u8]) -> Result<(), SpoolError> {
        self.fs
            .write(&mut incoming.file, &incoming.path, bytes)
            .map_err(io_err(&incoming.path))?;
        incoming.size += bytes.len() as u64;
        Ok(())
    }

    /// Makes the message durable; after this returns the message may be acknowledged.
    ///
    /// # Errors
    /// Any step failed; nothing was committed and the body is removed.
    pub fn commit(
        &self,
        incoming: IncomingMessage,
        envelope: Envelope,
    ) -> Result<EntryMeta, SpoolError> {
        let meta = EntryMeta {
            id: incoming.id,
            envelope,
            attempts: 0,
            next_attempt_at_ms: now_ms(),
            last_error: None,
            draft_id: None,
        };
        let used = self.used.fetch_add(incoming.size, Ordering::Relaxed);
        if let Some(max) = self.max_size
            && used + incoming.size > max
        {
            self.used.fetch_sub(incoming.size, Ordering::Relaxed);
            let size = incoming.size;
            self.abort(incoming);
            return Err(SpoolError::OverSize { used, size, max });
        }
        let meta_path = self.meta_path(meta.id);
        // The body is durable before its commit marker can be: recovery trusts every marker.
        let body_synced = match self.sync_mode {
            SyncMode::File => self
                .fs
                .sync(&incoming.file, &incoming.path)
                .map_err(io_err(&incoming.path)),
            SyncMode::Filesystem => self.sync_grouped(),
        };
        let result = body_synced
            .and_then(|()| {
                // With `filesystem`, the flush after the rename covers the content too; a
                // crash before it leaves a marker that was never acknowledged.
                let sync_content = self.sync_mode == SyncMode::File;
                self.write_meta_file(&self.dir, &meta, sync_content)
            })
            .and_then(|()| {
                self.sync_grouped().inspect_err(|_| {
                    // Renamed but not durable: never acknowledged, so not kept either.
                    let _ = self.fs.remove(&meta_path);
                })
            });
        if result.is_err() {
            self.used.fetch_sub(incoming.size, Ordering::Relaxed);
            self.abort(incoming);
        }
        result.map(|()| meta)
    }

    /// Flushes the spool directory (`file`) or its filesystem (`filesystem`), sharing the
    /// flush with commits and removals that arrive meanwhile.
    fn sync_grouped(&self) -> Result<(), SpoolError> {
        let sync = &self.dir_sync;
        let mut state = sync.state.lock().unwrap_or_else(|e| e.into_inner());
        state.issued += 1;
        let ticket = state.issued;
        loop {
            if state.synced >= ticket {
                return Ok(());
            }
            if !state.syncing {
                state.syncing = true;
                let covers = state.issued;
                drop(state);
                let result = match self.sync_mode {
                    SyncMode::File => self.fs.sync_dir(&self.dir),
                    SyncMode::Filesystem => self.fs.sync_fs(&self.dir),
                };
                state = sync.state.lock().unwrap_or_else(|e| e.into_inner());
                state.syncing = false;
                if result.is_ok() {
                    state.synced = state.synced.max(covers);
                }
                sync.done.notify_all();
                // On failure the waiting committers try the fsync themselves.
                return result.map_err(io_err(&self.dir));
            }
            state = sync.done.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Drops a message that will not be acknowledged.
    pub fn abort(&self, incoming: IncomingMessage) {
        let IncomingMessage { path, file, .. } = incoming;
        drop(file);
        if let Err(err) = self.fs.remove(&path) {
            // Left behind, it is an orphan and removed at the next start.
            tracing::warn!(path = %path.display(), error = %err, "cannot remove aborted body");
        }
    }

    /// Writes `meta` into `dir` atomically: temp file, fsync, rename, fsync the directory.
    fn write_meta(&self, dir: &Path, meta: &EntryMeta) -> Result<(), SpoolError> {
        self.write_meta_file(dir, meta, true)?;
        self.fs.sync_dir(dir).map_err(io_err(dir))
    }

    /// Temp file, fsync (when `sync_content`), rename; the caller flushes the directory.
    fn write_meta_file(
        &self,
        dir: &Path,
        meta: &EntryMeta,
        sync_content: bool,
    ) -> Result<(), SpoolError> {
        let final_path = dir.join(format!("{}.{META_EXT}", meta.id));
        let tmp_path = dir.join(format!("{}.{TMP_EXT}", meta.id));
        let json = serde_json::to_vec(meta).expect("entry metadata always serialises");
        // The temp file of an earlier write that crashed would block `create_new`.
        let _ = std::fs::remove_file(&tmp_path);
        let mut file = self.fs.create(&tmp_path).map_err(io_err(&tmp_path))?;
        let written = self
            .fs
            .write(&mut file, &tmp_path, &json)
            .and_then(|()| {
                if sync_content {
                    self.fs.sync(&file, &tmp_path)
                } else {
                    Ok(())
                }
            })
            .and_then(|()| self.fs.rename(&tmp_path, &final_path));
        if let Err(err) = written {
            drop(file);
            let _ = self.fs.remove(&tmp_path);
            return Err(io_err(&tmp_path)(err));
        }
        Ok(())
    }

    /// Persists a changed entry (attempt count, next attempt, last error).
    ///
    /// # Errors
    /// The metadata could not be rewritten; the previous version stays in place.
    pub fn update(&self, meta: &EntryMeta) -> Result<(), SpoolError> {
        self.write_meta(&self.dir, meta)
    }

    /// Reads a message's body.
    ///
    /// # Errors
    /// The body file is missing or unreadable.
    pub fn read_body(&self, id: QueueId) -> Result<Vec<u8>, SpoolError> {
        let path = self.body_path(id);
        std::fs::read(&path).map_err(io_err(&path))
    }

    /// Removes a delivered entry; the commit marker goes first, so a crash in between leaves
    /// only an orphan body, which the next start removes.
    ///
    /// # Errors
    /// A file could not be removed.
    pub fn remove(&self, id: QueueId) -> Result<(), SpoolError> {
        let meta = self.meta_path(id);
        self.fs.remove(&meta).map_err(io_err(&meta))?;
        let body = self.body_path(id);
        let size = body_size(&body);
        self.fs.remove(&body).map_err(io_err(&body))?;
        self.used
            .fetch_sub(size.min(self.used()), Ordering::Relaxed);
        self.sync_grouped()
    }

    /// Moves an entry to `failed/` with the reason in its metadata.
    ///
    /// # Errors
    /// The move could not be completed; the entry stays in the live queue.
    pub fn fail(&self, meta: &EntryMeta) -> Result<(), SpoolError> {
        let body = self.body_path(meta.id);
        let failed_body = self.failed_dir.join(format!("{}.{BODY_EXT}", meta.id));
        let size = body_size(&body);
        self.fs.rename(&body, &failed_body).map_err(io_err(&body))?;
        self.used
            .fetch_sub(size.min(self.used()), Ordering::Relaxed);
        self.write_meta(&self.failed_dir, meta)?;
        let live_meta = self.meta_path(meta.id);
        self.fs.remove(&live_meta).map_err(io_err(&live_meta))?;
        self.fs.sync_dir(&self.dir).map_err(io_err(&self.dir))
    }

    /// Moves a failed entry back into the live queue, due now (an operator's retry).
    ///
    /// # Errors
    /// The entry is not in `failed/`, or a file operation failed (the entry stays failed).
    pub fn requeue(&self, id: QueueId) -> Result<EntryMeta, SpoolError> {
        let failed_meta = self.failed_dir.join(format!("{id}.{META_EXT}"));
        let mut meta = read_meta(&failed_meta)?;
        meta.next_attempt_at_ms = now_ms();
        // The live meta comes first: until the body is back, recovery finds the body in
        // failed/ and finishes the entry as failed, so a crash never orphans the body.
        let failed_body = self.failed_dir.join(format!("{id}.{BODY_EXT}"));
        let body = self.body_path(id);
        self.write_meta(&self.dir, &meta)?;
        self.fs
            .rename(&failed_body, &body)
            .map_err(io_err(&failed_body))?;
        self.fs.sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        self.fs.remove(&failed_meta).map_err(io_err(&failed_meta))?;
        self.fs
            .sync_dir(&self.failed_dir)
            .map_err(io_err(&self.failed_dir))?;
        self.used.fetch_add(body_size(&body), Ordering::Relaxed);
        Ok(meta)
    }

    /// Deletes an entry from `failed/`; `false` when there is none with this id.
    ///
    /// # Errors
    /// A file could not be removed.
    pub fn delete_failed(&self, id: QueueId) -> Result<bool, SpoolError> {
        let meta = self.failed_dir.join(format!("{id}.{META_EXT}"));
        if !meta.exists() {
            return Ok(false);
        }
        self.fs.remove(&meta).map_err(io_err(&meta))?;
        let body = self.failed_dir.join(format!("{id}.{BODY_EXT}"));
        self.fs.remove(&body).map_err(io_err(&body))?;
        self.fs
            .sync_dir(&self.failed_dir)
            .map_err(io_err(&self.failed_dir))?;
        Ok(true)
    }

    /// How many entries `failed/` holds, without reading them (the queue gauges ask often).
    ///
    /// # Errors
    /// `failed/` cannot be read.
    pub fn failed_count(&self) -> Result<usize, SpoolError> {
        let mut count = 0;
        for dirent in std::fs::read_dir(&self.failed_dir).map_err(io_err(&self.failed_dir))? {
            let path = dirent.map_err(io_err(&self.failed_dir))?.path();
            count += usize::from(path.extension().and_then(|ext| ext.to_str()) == Some(META_EXT));
        }
        Ok(count)
    }

    /// Entries in `failed/`, oldest first.
    ///
    /// # Errors
    /// `failed/` cannot be read.
    pub fn failed_entries(&self) -> Result<Vec<EntryMeta>, SpoolError> {
        let mut entries = Vec::new();
        for dirent in std::fs::read_dir(&self.failed_dir).map_err(io_err(&self.failed_dir))? {
            let path = dirent.map_err(io_err(&self.failed_dir))?.path();
            if path.extension().and_then(|ext| ext.to_str()) == Some(META_EXT) {
                entries.push(read_meta(&path)?);
            }
        }
        entries.sort_by_key(|meta| meta.id);
        Ok(entries)
    }
}

fn body_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
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
