//! The spool's file operations for tests: the real file system, whose writes fail as on a full
//! disk and whose removals (and recycling of entry files) fail as on a read-only one, while a
//! test says so.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

use super::spool::{FileOps, RealFs};

#[derive(Default)]
pub(crate) struct FaultyFs {
    /// Writes fail with ENOSPC.
    pub full: AtomicBool,
    /// Removals fail with EROFS.
    pub read_only: AtomicBool,
    /// Removals tried, failed ones included.
    pub removals: AtomicUsize,
}

impl FileOps for FaultyFs {
    fn write(&self, file: &mut File, path: &Path, bytes: &[u8]) -> io::Result<()> {
        if self.full.load(SeqCst) {
            return Err(io::ErrorKind::StorageFull.into());
        }
        RealFs.write(file, path, bytes)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.removals.fetch_add(1, SeqCst);
        if self.read_only.load(SeqCst) {
            return Err(io::ErrorKind::ReadOnlyFilesystem.into());
        }
        RealFs.remove(path)
    }
    /// Removing an entry empties it and keeps it as a spare: as much a removal here.
    fn recycle(&self, path: &Path, spare: &Path) -> io::Result<()> {
        self.removals.fetch_add(1, SeqCst);
        if self.read_only.load(SeqCst) {
            return Err(io::ErrorKind::ReadOnlyFilesystem.into());
        }
        RealFs.recycle(path, spare)
    }
}
