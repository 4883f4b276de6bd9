//! The spool's batch writer: one thread writes the files of every commit and removal that
//! arrive together, then makes them all durable with one flush, and answers each. Sessions and
//! deliveries await the answer instead of holding a thread each while a flush runs, so a burst
//! of 100 commits costs one flush and a handful of wake-ups.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::{FileOps, SpoolError, SyncMode, io_err};

/// The file operations of the live queue, shared by the writer thread and the spool's
/// synchronous paths so both write and flush the same way.
#[derive(Clone)]
pub(super) struct Files {
    pub fs: Arc<dyn FileOps>,
    pub dir: PathBuf,
    pub mode: SyncMode,
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
            None => self.fs.create(path).map_err(io_err(path))?,
        };
        self.fs
            .write(&mut file, path, bytes)
            .and_then(|()| match self.mode {
                SyncMode::File => self.fs.sync(&file, path),
                SyncMode::Filesystem => Ok(()),
            })
            .map_err(io_err(path))
    }

    /// Unlinks an entry: the entry file (its commit marker) first, then its updated metadata
    /// if it has any; returns the entry file's size.
    pub fn unlink_entry(&self, entry: &Path, meta: &Path) -> Result<u64, SpoolError> {
        let size = std::fs::symlink_metadata(entry).map_or(0, |m| m.len());
        self.fs.remove(entry).map_err(io_err(entry))?;
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
            Job::Remove { entry, meta, reply } => match files.unlink_entry(&entry, &meta) {
                Ok(size) => written.push(Written::Removed(size, reply)),
                Err(err) => {
                    let _ = reply.send(Err(err));
                }
            },
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
