//! The spool's batch writer: one thread writes the files of every commit and removal that
//! arrive together, then makes them all durable with one flush, and answers each. Sessions and
//! deliveries await the answer instead of holding a thread each while a flush runs, so a burst
//! of 100 commits costs one flush and a handful of wake-ups.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::{FileOps, SPARE_EXT, SpoolError, SyncMode, io_err};

/// How many emptied entry files are kept for reuse; more are removed. A burst of deliveries
/// beyond it costs inode churn again, nothing else.
const MAX_SPARES: usize = 1024;

/// The file operations of the live queue, shared by the writer thread and the spool's
/// synchronous paths so both write and flush the same way.
#[derive(Clone)]
pub(super) struct Files {
    pub fs: Arc<dyn FileOps>,
    pub dir: PathBuf,
    pub mode: SyncMode,
    pub spares: Arc<Spares>,
}

/// Emptied entry files (`<n>.spare` in the spool directory) kept for new messages. On ext4
/// without a journal, allocating an inode skips every inode freed in the last half minute one
/// by one, so at thousands of messages a second a new file per message made creation the
/// spool's largest cost; renaming a spare costs a directory entry, and emptying it keeps no
/// delivered message on disk. Emptying frees the file's blocks, which on a filesystem mounted
/// with `discard` waits for the device: the writer leaves it to a thread of its own, so no
/// commit waits for it.
#[derive(Default)]
pub(super) struct Spares {
    free: Arc<Mutex<Vec<PathBuf>>>,
    next: AtomicU64,
    /// Empties spares retired by the writer; started with the first.
    emptier: Mutex<Option<Emptier>>,
}

/// When a retired entry file is emptied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Emptying {
    /// Before the call returns (the spool's synchronous paths).
    Now,
    /// On the emptier thread (the writer's removals).
    Background,
}

struct Emptier {
    queue: Option<mpsc::Sender<PathBuf>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Spares {
    /// Lets the emptier finish: no spare is left full when the spool's lock is released.
    fn drop(&mut self) {
        let emptier = self.emptier.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(mut emptier) = emptier.take() {
            drop(emptier.queue.take());
            if let Some(thread) = emptier.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// Empties a spare and makes it available; one that cannot be emptied is removed instead.
fn empty_into(free: &Mutex<Vec<PathBuf>>, spare: PathBuf) {
    let emptied = std::fs::OpenOptions::new()
        .write(true)
        .open(&spare)
        .and_then(|file| file.set_len(0));
    match emptied {
        Ok(()) => free.lock().unwrap_or_else(|e| e.into_inner()).push(spare),
        Err(err) => {
            tracing::warn!(spare = %spare.display(), error = %err, "cannot empty a spare spool file; removing it");
            let _ = std::fs::remove_file(&spare);
        }
    }
}

impl Spares {
    fn take(&self) -> Option<PathBuf> {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// A retired entry file, now named `spare`: emptied as `when` says, then reusable.
    fn retire(&self, spare: PathBuf, when: Emptying) {
        if when == Emptying::Now {
            return empty_into(&self.free, spare);
        }
        let mut emptier = self.emptier.lock().unwrap_or_else(|e| e.into_inner());
        let emptier = emptier.get_or_insert_with(|| {
            let (queue, spares) = mpsc::channel::<PathBuf>();
            let free = self.free.clone();
            let thread = std::thread::Builder::new()
                .name("spool-emptier".into())
                .spawn(move || {
                    for spare in spares {
                        empty_into(&free, spare);
                    }
                })
                .expect("the spool emptier thread starts");
            Emptier {
                queue: Some(queue),
                thread: Some(thread),
            }
        });
        if let Some(queue) = &emptier.queue {
            let _ = queue.send(spare);
        }
    }

    /// A name for one more spare, unless there are enough.
    fn name(&self, dir: &Path) -> Option<PathBuf> {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        (free.len() < MAX_SPARES).then(|| {
            let number = self.next.fetch_add(1, Ordering::Relaxed);
            dir.join(format!("{number}.{SPARE_EXT}"))
        })
    }

    /// Takes over the spares found at open, emptied (a crash can leave one renamed before
    /// its emptying reached the disk); removes those beyond the limit.
    pub fn adopt(&self, found: Vec<(u64, PathBuf)>, fs: &dyn FileOps) -> Result<(), SpoolError> {
        let next = found
            .iter()
            .map(|(number, _)| number + 1)
            .max()
            .unwrap_or(0);
        self.next.fetch_max(next, Ordering::Relaxed);
        for (_, path) in found {
            if self.free.lock().unwrap_or_else(|e| e.into_inner()).len() >= MAX_SPARES {
                fs.remove(&path).map_err(io_err(&path))?;
                continue;
            }
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|file| file.set_len(0))
                .map_err(io_err(&path))?;
            self.free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(path);
        }
        Ok(())
    }
}

impl Files {
    /// Writes a whole entry file (`file` is open when the message was streamed to it already);
    /// with `file`, its content is flushed here, with `filesystem` by the batch's `syncfs`.
    pub fn write_entry(
        &self,
        path: &Path,
        file: Option<File>,
        bytes: &[u8],
    ) -> Result<(), SpoolError> {
        let mut file = match file {
            Some(file) => file,
            None => self.create_entry(path)?,
        };
        self.fs
            .write(&mut file, path, bytes)
            .and_then(|()| match self.mode {
                SyncMode::File => self.fs.sync(&file, path),
                SyncMode::Filesystem => Ok(()),
            })
            .map_err(io_err(path))
    }

    /// A new, empty entry file at `path`: a spare renamed when there is one.
    pub fn create_entry(&self, path: &Path) -> Result<File, SpoolError> {
        if let Some(spare) = self.spares.take() {
            match self.fs.reuse(&spare, path) {
                Ok(file) => return Ok(file),
                // Gone or unusable: a new file does instead.
                Err(err) => {
                    tracing::debug!(spare = %spare.display(), error = %err, "spare spool file not reused");
                }
            }
        }
        self.fs.create(path).map_err(io_err(path))
    }

    /// Removes an entry: the entry file (its commit marker) first, kept as a spare (emptied
    /// as `emptying` says) or unlinked, then its updated metadata if it has any; returns the
    /// entry file's size.
    pub fn unlink_entry(
        &self,
        entry: &Path,
        meta: &Path,
        emptying: Emptying,
    ) -> Result<u64, SpoolError> {
        let size = std::fs::symlink_metadata(entry).map_or(0, |m| m.len());
        match self.spares.name(&self.dir) {
            Some(spare) => {
                self.fs.recycle(entry, &spare).map_err(io_err(entry))?;
                self.spares.retire(spare, emptying);
            }
            None => self.fs.remove(entry).map_err(io_err(entry))?,
        }
        match self.fs.remove(meta) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(io_err(meta)(err)),
            _ => Ok(size),
        }
    }

    /// Makes every write and removal made before it durable: the directory's fsync after
    /// per-file fsyncs (`file`), or one `syncfs` for all (`filesystem`).
    pub fn flush(&self) -> Result<(), SpoolError> {
        match self.mode {
            SyncMode::File => self.fs.sync_dir(&self.dir),
            SyncMode::Filesystem => self.fs.sync_fs(&self.dir),
        }
        .map_err(io_err(&self.dir))
    }

    /// Best effort: a leftover is an uncommitted file, removed at the next start.
    pub fn discard(&self, path: &Path) {
        if let Err(err) = self.fs.remove(path)
            && err.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove an uncommitted spool file");
        }
    }
}

/// Work for the writer thread.
pub(super) enum Job {
    Commit {
        path: PathBuf,
        file: Option<File>,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    Remove {
        entry: PathBuf,
        meta: PathBuf,
        /// The removed entry file's size.
        reply: oneshot::Sender<Result<u64, SpoolError>>,
    },
}

/// The writer thread's handle; dropping it lets the thread finish what it was given and waits.
pub(super) enum Writer {
    Thread {
        jobs: Option<mpsc::Sender<Job>>,
        thread: Option<JoinHandle<()>>,
    },
    /// Each job done at once on the submitting thread, for tests on tokio's paused clock (which
    /// jumps ahead while a task awaits another thread, but not while a task blocks).
    #[cfg(test)]
    Inline(Files),
}

impl Writer {
    pub fn spawn(files: Files) -> Self {
        let (jobs, queue) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || {
                while let Ok(first) = queue.recv() {
                    batch(&files, std::iter::once(first).chain(queue.try_iter()));
                }
            })
            .expect("the spool writer thread starts");
        Self::Thread {
            jobs: Some(jobs),
            thread: Some(thread),
        }
    }

    /// Hands a job over; its reply comes once its files are durable (or could not be made so).
    pub fn submit(&self, job: Job) {
        match self {
            // The thread only ends when this handle is dropped: a send cannot fail before.
            Self::Thread {
                jobs: Some(jobs), ..
            } => {
                let _ = jobs.send(job);
            }
            Self::Thread { jobs: None, .. } => {}
            #[cfg(test)]
            Self::Inline(files) => batch(files, std::iter::once(job)),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        match self {
            Self::Thread { jobs, thread } => {
                drop(jobs.take());
                if let Some(thread) = thread.take() {
                    let _ = thread.join();
                }
            }
            #[cfg(test)]
            Self::Inline(_) => {}
        }
    }
}

/// A job whose files are written, waiting for the batch's flush.
enum Written {
    Commit(PathBuf, oneshot::Sender<Result<(), SpoolError>>),
    Removed(u64, oneshot::Sender<Result<u64, SpoolError>>),
}

/// Writes the files of every job, flushes once, and answers each.
fn batch(files: &Files, jobs: impl Iterator<Item = Job>) {
    let mut written = Vec::new();
    for job in jobs {
        match job {
            Job::Commit {
                path,
                file,
                bytes,
                reply,
            } => match files.write_entry(&path, file, &bytes) {
                Ok(()) => written.push(Written::Commit(path, reply)),
                Err(err) => {
                    files.discard(&path);
                    let _ = reply.send(Err(err));
                }
            },
            Job::Remove { entry, meta, reply } => {
                match files.unlink_entry(&entry, &meta, Emptying::Background) {
                    Ok(size) => written.push(Written::Removed(size, reply)),
                    Err(err) => {
                        let _ = reply.send(Err(err));
                    }
                }
            }
        }
    }
    if written.is_empty() {
        return;
    }
    let flushed = files.flush();
    for job in written {
        match (job, &flushed) {
            (Written::Commit(_, reply), Ok(())) => {
                let _ = reply.send(Ok(()));
            }
            (Written::Removed(size, reply), Ok(())) => {
                let _ = reply.send(Ok(size));
            }
            // Written but not durable: never acknowledged, so not kept either.
            (Written::Commit(path, reply), Err(err)) => {
                files.discard(&path);
                let _ = reply.send(Err(copy(err)));
            }
            (Written::Removed(_, reply), Err(err)) => {
                let _ = reply.send(Err(copy(err)));
            }
        }
    }
}

/// One flush's failure, told to each job it covered.
fn copy(err: &SpoolError) -> SpoolError {
    match err {
        SpoolError::Io { path, source } => SpoolError::Io {
            path: path.clone(),
            source: io::Error::new(source.kind(), source.to_string()),
        },
        other => SpoolError::Io {
            path: PathBuf::new(),
            source: io::Error::other(other.to_string()),
        },
    }
}
