//! Spool tests: the commit order, recovery after a crash, and the failed and corrupt paths.

use std::sync::Mutex;

use super::*;

/// Records every file operation, by kind and file name, then performs it for real.
#[derive(Default)]
struct Recording {
    ops: Mutex<Vec<String>>,
}

impl Recording {
    fn log(&self, op: &str, path: &Path) {
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        self.ops.lock().unwrap().push(format!("{op} {name}"));
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.ops.lock().unwrap())
    }
}

impl FileOps for Recording {
    fn create(&self, path: &Path) -> io::Result<File> {
        self.log("create", path);
        RealFs.create(path)
    }
    fn write(&self, file: &mut File, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.log("write", path);
        RealFs.write(file, path, bytes)
    }
    fn sync(&self, file: &File, path: &Path) -> io::Result<()> {
        self.log("fsync", path);
        RealFs.sync(file, path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.log("rename", from);
        self.log("  to", to);
        RealFs.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.log("fsync-dir", dir);
        RealFs.sync_dir(dir)
    }
    fn sync_fs(&self, dir: &Path) -> io::Result<()> {
        self.log("syncfs", dir);
        RealFs.sync_fs(dir)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.log("remove", path);
        RealFs.remove(path)
    }
}

fn envelope() -> Envelope {
    Envelope {
        mail_from: "scanner@example.com".into(),
        rcpt_to: vec!["alice@example.com".into()],
        client: "127.0.0.1:40000".into(),
        received_at_ms: 1,
        origin: None,
    }
}

fn commit(spool: &Spool, body: &[u8]) -> EntryMeta {
    let mut incoming = spool.receive();
    spool.append(&mut incoming, body).unwrap();
    spool.commit(incoming, envelope()).unwrap()
}

#[test]
fn commit_writes_the_entry_then_flushes_the_file_and_its_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    let recording = Arc::new(Recording::default());
    let (spool, _) = Spool::open_with(&dir, recording.clone()).unwrap();
    let spool = spool.with_sync(SyncMode::File);
    recording.take();

    let meta = commit(&spool, b"Subject: hi\r\n\r\nbody\r\n");
    let id = meta.id;
    let dir_name = "q".to_string();
    assert_eq!(
        recording.take(),
        vec![
            format!("create {id}.msg"),
            format!("write {id}.msg"),
            // The footer: metadata and checksum.
            format!("write {id}.msg"),
            format!("fsync {id}.msg"),
            format!("fsync-dir {dir_name}"),
        ]
    );
    assert_eq!(spool.read_body(id).unwrap(), b"Subject: hi\r\n\r\nbody\r\n");
}

#[test]
fn with_syncfs_one_flush_commits_an_entry_and_one_removes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    let recording = Arc::new(Recording::default());
    let (spool, _) = Spool::open_with(&dir, recording.clone()).unwrap();
    let spool = spool.with_sync(SyncMode::Filesystem);
    recording.take();

    let meta = commit(&spool, b"Subject: hi\r\n\r\nbody\r\n");
    let id = meta.id;
    assert_eq!(
        recording.take(),
        vec![
            format!("create {id}.msg"),
            format!("write {id}.msg"),
            format!("write {id}.msg"),
            "syncfs q".to_string(),
        ]
    );
    // The entry file is the commit marker: it goes first, emptied and kept as a spare; then
    // metadata an update left.
    spool.remove(id).unwrap();
    assert_eq!(
        recording.take(),
        vec![
            format!("rename {id}.msg"),
            "  to 0.spare".to_string(),
            format!("remove {id}.json"),
            "syncfs q".to_string(),
        ]
    );
    assert_eq!(std::fs::metadata(dir.join("0.spare")).unwrap().len(), 0);
    // The next message takes the spare instead of a new inode.
    let next = commit(&spool, b"Subject: again\r\n\r\nbody\r\n").id;
    assert_eq!(
        recording.take(),
        vec![
            "rename 0.spare".to_string(),
            format!("  to {next}.msg"),
            format!("write {next}.msg"),
            format!("write {next}.msg"),
            "syncfs q".to_string(),
        ]
    );
    assert_eq!(
        spool.read_body(next).unwrap(),
        b"Subject: again\r\n\r\nbody\r\n"
    );
}

#[test]
fn files_and_directories_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    let (spool, _) = Spool::open(&dir).unwrap();
    let meta = commit(&spool, b"x");
    spool.update(&meta).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("failed")), 0o700);
    assert_eq!(mode(&spool.entry_path(meta.id)), 0o600);
    assert_eq!(mode(&spool.meta_path(meta.id)), 0o600);
}

#[test]
fn reopening_recovers_committed_entries_and_removes_uncommitted_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    let committed;
    {
        let (spool, _) = Spool::open(&dir).unwrap();
        committed = commit(&spool, b"kept");
        // A crash during DATA: body written, never committed.
        let mut incoming = spool.receive();
        spool.append(&mut incoming, b"half").unwrap();
        std::mem::forget(incoming);
        // A crash during the meta write: the temp file is left.
        std::fs::write(dir.join(format!("{}.tmp", QueueId::generate())), b"{").unwrap();
    }
    let (spool, recovered) = Spool::open(&dir).unwrap();
    assert_eq!(recovered.entries, vec![committed.clone()]);
    assert_eq!(recovered.orphans_removed, 1);
    assert_eq!(spool.read_body(committed.id).unwrap(), b"kept");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.') && n != "failed")
        .collect();
    assert_eq!(
        names,
        vec![format!("{}.msg", committed.id)],
        "only the committed entry is left"
    );
}

#[test]
fn a_second_process_cannot_open_the_same_spool() {
    let tmp = tempfile::tempdir().unwrap();
    let _first = Spool::open(tmp.path()).unwrap();
    let err = Spool::open(tmp.path())
        .err()
        .expect("lock must be exclusive");
    assert!(matches!(err, SpoolError::Locked(_)), "{err}");
    assert!(err.to_string().contains("another graph-relay process"));
}

#[test]
fn update_persists_attempts_and_remove_deletes_the_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let mut meta = commit(&spool, b"x");
    meta.attempts = 3;
    meta.last_error = Some("HTTP 503".into());
    spool.update(&meta).unwrap();
    drop(spool);
    let (spool, recovered) = Spool::open(tmp.path()).unwrap();
    assert_eq!(recovered.entries, vec![meta.clone()]);
    spool.remove(meta.id).unwrap();
    drop(spool);
    let (_, recovered) = Spool::open(tmp.path()).unwrap();
    assert!(recovered.entries.is_empty());
}

#[test]
fn failed_entries_keep_body_and_reason_outside_the_live_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let mut meta = commit(&spool, b"body");
    meta.last_error = Some("Graph refused: 404 ErrorInvalidUser".into());
    assert_eq!(spool.failed_count().unwrap(), 0);
    spool.fail(&meta).unwrap();
    assert_eq!(spool.failed_entries().unwrap(), vec![meta.clone()]);
    assert_eq!(spool.failed_count().unwrap(), 1);
    let failed_file = std::fs::read(tmp.path().join("failed").join(format!("{}.msg", meta.id)));
    assert_eq!(record::split(&failed_file.unwrap()).unwrap().0, b"body");
    drop(spool);
    let (_, recovered) = Spool::open(tmp.path()).unwrap();
    assert!(recovered.entries.is_empty());
}

#[test]
fn corrupt_metadata_is_quarantined_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let (good, bad_id) = {
        let (spool, _) = Spool::open(tmp.path()).unwrap();
        (commit(&spool, b"good"), commit(&spool, b"bad").id)
    };
    // An update's metadata that cannot be read; and an entry of the earlier layout alike.
    std::fs::write(tmp.path().join(format!("{bad_id}.json")), b"{not json").unwrap();
    let legacy_id = QueueId::generate();
    std::fs::write(tmp.path().join(format!("{legacy_id}.json")), b"{not json").unwrap();
    std::fs::write(tmp.path().join(format!("{legacy_id}.eml")), b"body").unwrap();
    let (_, recovered) = Spool::open(tmp.path()).unwrap();
    assert_eq!(recovered.entries, vec![good]);
    assert_eq!(recovered.quarantined, 1);
    for name in [
        format!("{bad_id}.json"),
        format!("{bad_id}.msg"),
        format!("{legacy_id}.json"),
        format!("{legacy_id}.eml"),
    ] {
        assert!(tmp.path().join("corrupt").join(&name).exists(), "{name}");
    }
}

#[test]
fn a_failed_commit_leaves_nothing_behind() {
    struct FailingSync;
    impl FileOps for FailingSync {
        fn sync(&self, _: &File, _: &Path) -> io::Result<()> {
            Err(io::Error::other("disk on fire"))
        }
        fn sync_fs(&self, _: &Path) -> io::Result<()> {
            Err(io::Error::other("disk on fire"))
        }
    }
    // The file's fsync fails with `file`, the grouped syncfs with `filesystem`; on the
    // caller's thread and on the writer's.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for (mode, on_writer) in [
        (SyncMode::File, false),
        (SyncMode::Filesystem, false),
        (SyncMode::File, true),
        (SyncMode::Filesystem, true),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open_with(tmp.path(), Arc::new(FailingSync)).unwrap();
        let spool = spool.with_sync(mode);
        let mut incoming = spool.receive();
        spool.append(&mut incoming, b"x").unwrap();
        let err = if on_writer {
            runtime
                .block_on(spool.commit_async(incoming, b"y".to_vec(), envelope()))
                .unwrap_err()
        } else {
            spool.commit(incoming, envelope()).unwrap_err()
        };
        let mode = (mode, on_writer);
        assert!(err.to_string().contains("disk on fire"), "{mode:?}: {err}");
        let leftovers = std::fs::read_dir(tmp.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_file())
            .filter(|e| {
                !e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
        assert_eq!(leftovers, 0, "{mode:?}");
        assert_eq!(spool.used(), 0, "{mode:?}");
    }
}

/// Performs the first `allowed` file operations for real and fails every later one, as if the
/// process had died there (nothing after the crash point reaches the disk).
struct CrashAfter {
    allowed: usize,
    done: Mutex<usize>,
}

impl CrashAfter {
    fn new(allowed: usize) -> Arc<Self> {
        Arc::new(Self {
            allowed,
            done: Mutex::new(0),
        })
    }

    fn step(&self) -> io::Result<()> {
        let mut done = self.done.lock().unwrap();
        *done += 1;
        if *done > self.allowed {
            return Err(io::Error::other("crash point"));
        }
        Ok(())
    }
}

impl FileOps for CrashAfter {
    fn create(&self, path: &Path) -> io::Result<File> {
        self.step()?;
        RealFs.create(path)
    }
    fn write(&self, file: &mut File, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.step()?;
        RealFs.write(file, path, bytes)
    }
    fn sync(&self, file: &File, path: &Path) -> io::Result<()> {
        self.step()?;
        RealFs.sync(file, path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step()?;
        RealFs.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.step()?;
        RealFs.sync_dir(dir)
    }
    fn sync_fs(&self, dir: &Path) -> io::Result<()> {
        self.step()?;
        RealFs.sync_fs(dir)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.step()?;
        RealFs.remove(path)
    }
}

/// Live entries after a restart, each with its body; no stray files left beside them.
fn reopen(dir: &Path) -> (Spool, Vec<EntryMeta>) {
    let (spool, recovered) = Spool::open(dir).unwrap();
    for meta in &recovered.entries {
        assert!(spool.read_body(meta.id).is_ok(), "entry without body");
    }
    let stray: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".msg") || n.ends_with(".tmp") || n.ends_with(".json"))
        .filter(|n| {
            !recovered
                .entries
                .iter()
                .any(|m| n.starts_with(&m.id.to_string()))
        })
        .collect();
    assert!(stray.is_empty(), "stray files {stray:?}");
    (spool, recovered.entries)
}

#[test]
fn a_crash_at_any_step_of_a_commit_loses_no_acknowledged_message() {
    // file: create (or rename a spare), write body, write footer, fsync, fsync dir: 5 steps.
    // filesystem: create (or rename a spare), write body, write footer, syncfs: 4 steps.
    for spare in [false, true] {
        for (mode, steps) in [(SyncMode::File, 5), (SyncMode::Filesystem, 4)] {
            crash_during_commit(mode, steps, spare);
        }
    }
}

fn crash_during_commit(mode: SyncMode, steps: usize, spare: bool) {
    for allowed in 0..=steps {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("q");
        if spare {
            let (spool, _) = Spool::open(&dir).unwrap();
            spool.remove(commit(&spool, b"delivered").id).unwrap();
        }
        let committed = {
            let (spool, _) = Spool::open_with(&dir, CrashAfter::new(allowed)).unwrap();
            let spool = spool.with_sync(mode);
            let mut incoming = spool.receive();
            spool
                .append(&mut incoming, b"body")
                .and_then(|()| spool.commit(incoming, envelope()))
                .ok()
        };
        let (spool, entries) = reopen(&dir);
        let here = format!("{mode:?} step {allowed}, spare {spare}");
        match &committed {
            // Acknowledged: it must be there, intact.
            Some(meta) => {
                assert_eq!(entries, vec![meta.clone()], "{here}");
                assert_eq!(spool.read_body(meta.id).unwrap(), b"body");
            }
            // Not acknowledged: it may be there (the client retries: at least once) or not.
            None => assert!(entries.len() <= 1, "{here}"),
        }
        assert_eq!(allowed == steps, committed.is_some(), "{here}");
    }
}

#[test]
fn a_crash_at_any_step_of_update_remove_or_fail_keeps_the_entry_whole() {
    type Op = fn(&Spool, &EntryMeta) -> Result<(), SpoolError>;
    let ops: [(&str, Op, usize); 3] = [
        ("update", |s, m| s.update(m), 5),
        ("remove", |s, m| s.remove(m.id), 3),
        ("fail", |s, m| s.fail(m), 9),
    ];
    for (name, op, steps) in ops {
        for allowed in 0..=steps {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("q");
            let mut meta = {
                let (spool, _) = Spool::open(&dir).unwrap();
                commit(&spool, b"body")
            };
            meta.attempts = 3;
            meta.last_error = Some("HTTP 503".into());
            let result = {
                let (spool, _) = Spool::open_with(&dir, CrashAfter::new(allowed)).unwrap();
                op(&spool, &meta)
            };
            let (spool, entries) = reopen(&dir);
            let failed = spool.failed_entries().unwrap();
            let here = format!("{name} step {allowed}: {result:?}");
            // The entry is either still live (whole) or gone where the operation sends it.
            match (name, entries.len(), failed.len()) {
                (_, 1, 0) => assert_eq!(entries[0].id, meta.id, "{here}"),
                ("remove", 0, 0) | ("fail", 0, 1) => {}
                other => panic!("{here}: {other:?}"),
            }
            if result.is_ok() {
                match name {
                    "update" => assert_eq!(entries[0].attempts, 3, "{here}"),
                    "remove" => assert!(entries.is_empty(), "{here}"),
                    _ => assert_eq!(failed[0].last_error.as_deref(), Some("HTTP 503"), "{here}"),
                }
            }
        }
    }
}

#[test]
fn the_spool_refuses_mail_over_max_size_and_makes_room_as_entries_leave() {
    // An entry file is its message plus metadata and footer of a fixed size here.
    let overhead = {
        let tmp = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(tmp.path()).unwrap();
        commit(&spool, b"");
        spool.used()
    };
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let spool = spool.with_max_size(Some(2 * overhead + 10));
    let first = commit(&spool, b"123456");
    let mut incoming = spool.receive();
    spool.append(&mut incoming, b"12345").unwrap();
    let err = spool.commit(incoming, envelope()).unwrap_err();
    assert!(err.is_full() && err.is_retryable(), "{err}");
    assert!(err.to_string().contains("queue.max_size"), "{err}");
    assert_eq!(spool.used(), overhead + 6);
    spool.remove(first.id).unwrap();
    assert_eq!(spool.used(), 0);
    commit(&spool, b"12345");
    // Reopening counts what is queued.
    drop(spool);
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    assert_eq!(spool.used(), overhead + 5);
    let disk_full = SpoolError::Io {
        path: "x".into(),
        source: io::Error::from(io::ErrorKind::StorageFull),
    };
    assert!(disk_full.is_full());
}

/// Logs each entry write and the start and end of each flush (directory fsync or syncfs),
/// which takes a while, so commits pile up.
#[derive(Default)]
struct SlowFlush {
    log: Mutex<Vec<String>>,
}

impl SlowFlush {
    fn slow_flush(&self, flush: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        self.log.lock().unwrap().push("flush start".into());
        std::thread::sleep(std::time::Duration::from_millis(30));
        flush()?;
        self.log.lock().unwrap().push("flush end".into());
        Ok(())
    }
}

impl FileOps for SlowFlush {
    fn write(&self, file: &mut File, path: &Path, bytes: &[u8]) -> io::Result<()> {
        RealFs.write(file, path, bytes)?;
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        self.log.lock().unwrap().push(format!("write {name}"));
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.slow_flush(|| RealFs.sync_dir(dir))
    }
    fn sync_fs(&self, dir: &Path) -> io::Result<()> {
        self.slow_flush(|| RealFs.sync_fs(dir))
    }
}

#[test]
fn commits_arriving_together_share_a_flush_and_none_returns_before_its_flush() {
    for mode in [SyncMode::File, SyncMode::Filesystem] {
        commits_share_flushes(mode);
    }
}

fn commits_share_flushes(mode: SyncMode) {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Arc::new(SlowFlush::default());
    let (spool, _) = Spool::open_with(tmp.path(), fs.clone()).unwrap();
    let spool = Arc::new(spool.with_sync(mode));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    runtime.block_on(async {
        let sessions: Vec<_> = (0..16)
            .map(|i| {
                let (spool, fs) = (spool.clone(), fs.clone());
                tokio::spawn(async move {
                    // Half streamed to the file first, as a large message is.
                    let mut incoming = spool.receive();
                    if i % 2 == 0 {
                        spool.append(&mut incoming, b"bo").unwrap();
                    }
                    let tail = if i % 2 == 0 {
                        b"dy".to_vec()
                    } else {
                        b"body".to_vec()
                    };
                    let meta = spool
                        .commit_async(incoming, tail, envelope())
                        .await
                        .unwrap();
                    // The moment SMTP would answer 250.
                    fs.log.lock().unwrap().push(format!("ack {}.msg", meta.id));
                    meta.id
                })
            })
            .collect();
        for session in sessions {
            let id = session.await.unwrap();
            assert_eq!(spool.read_body(id).unwrap(), b"body");
        }
    });
    let log = fs.log.lock().unwrap().clone();
    let flushes = log.iter().filter(|l| *l == "flush start").count();
    assert!(
        flushes < 16,
        "{mode:?}: {flushes} flushes for 16 commits: {log:#?}"
    );
    for (ack_at, line) in log
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("ack "))
    {
        let name = &line["ack ".len()..];
        let written_at = log
            .iter()
            .rposition(|l| *l == format!("write {name}"))
            .unwrap();
        // A flush that started after the last write and ended before the acknowledgement.
        let covered = (written_at..ack_at).any(|start| {
            log[start] == "flush start" && log[start..ack_at].iter().any(|l| l == "flush end")
        });
        assert!(
            covered,
            "{mode:?}: {name} acknowledged without a covering flush: {log:#?}"
        );
    }
    // Removals go through the same writer and share flushes too.
    let before = log.len();
    let entries: Vec<QueueId> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".msg")?.parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert_eq!(entries.len(), 16);
    runtime.block_on(async {
        let removals: Vec<_> = entries
            .iter()
            .map(|&id| {
                let spool = spool.clone();
                tokio::spawn(async move { spool.remove_async(id).await })
            })
            .collect();
        for removal in removals {
            removal.await.unwrap().unwrap();
        }
    });
    let log = fs.log.lock().unwrap().clone();
    let flushes = log[before..].iter().filter(|l| *l == "flush start").count();
    assert!(
        (1..16).contains(&flushes),
        "{mode:?}: {flushes} flushes for 16 removals"
    );
    assert_eq!(spool.used(), 0);
    drop(spool);
    // The writer's removals are emptied off its thread, all of them before the spool is gone.
    let spares: Vec<u64> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "spare"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
    assert_eq!(spares, vec![0; 16], "{mode:?}");
    assert!(Spool::open(tmp.path()).unwrap().1.entries.is_empty());
}

/// Entries of the earlier two-file layout (`.eml` + `.json`), live and failed, are converted
/// at open and keep everything they had, the missing origin included; new ones keep theirs.
#[test]
fn entries_of_the_earlier_layout_are_converted_and_keep_their_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("q");
    std::fs::create_dir_all(dir.join("failed")).unwrap();
    let (id, failed_id, orphan_id) = (
        QueueId::generate(),
        QueueId::generate(),
        QueueId::generate(),
    );
    // Exactly what an earlier version wrote.
    let old = |id: QueueId, error: &str| {
        format!(
            r#"{{"id":"{id}","envelope":{{"mail_from":"app@example.com","rcpt_to":["bob@example.com"],"client":"127.0.0.1:1","received_at_ms":5}},"attempts":1,"next_attempt_at_ms":7,"last_error":"{error}"}}"#
        )
    };
    let body = b"From: app@example.com\r\n\r\nx\r\n";
    std::fs::write(dir.join(format!("{id}.json")), old(id, "HTTP 503")).unwrap();
    std::fs::write(dir.join(format!("{id}.eml")), body).unwrap();
    let failed = dir.join("failed");
    std::fs::write(
        failed.join(format!("{failed_id}.json")),
        old(failed_id, "refused"),
    )
    .unwrap();
    std::fs::write(failed.join(format!("{failed_id}.eml")), body).unwrap();
    // Never committed (no metadata): removed, as before.
    std::fs::write(dir.join(format!("{orphan_id}.eml")), body).unwrap();
    let (spool, recovered) = Spool::open(&dir).unwrap();
    assert_eq!(recovered.entries.len(), 1);
    let entry = &recovered.entries[0];
    assert_eq!(entry.id, id);
    assert_eq!(entry.attempts, 1);
    assert_eq!(entry.last_error.as_deref(), Some("HTTP 503"));
    assert_eq!(entry.envelope.mail_from, "app@example.com");
    assert_eq!(entry.envelope.origin, None);
    assert_eq!(spool.read_body(id).unwrap(), body);
    let failed_entries = spool.failed_entries().unwrap();
    assert_eq!(failed_entries.len(), 1);
    assert_eq!(failed_entries[0].last_error.as_deref(), Some("refused"));
    let requeued = spool.requeue(failed_id).unwrap();
    assert_eq!(spool.read_body(requeued.id).unwrap(), body);
    let left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .chain(std::fs::read_dir(&failed).unwrap())
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".eml"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    let mut incoming = spool.receive();
    spool.append(&mut incoming, b"x\r\n").unwrap();
    let recorded = Envelope {
        origin: Some(Box::new(Origin {
            listener: "scan".into(),
            user: Some("scanner".into()),
            sender: "scan@contoso.com".into(),
        })),
        ..envelope()
    };
    let meta = spool.commit(incoming, recorded.clone()).unwrap();
    drop(spool);
    let (_spool, recovered) = Spool::open(&dir).unwrap();
    assert_eq!(recovered.entries.len(), 3);
    let reloaded = recovered.entries.iter().find(|e| e.id == meta.id).unwrap();
    assert_eq!(reloaded.envelope, recorded);
}

/// A file without a whole footer, or whose footer does not match the rest (a crash before the
/// flush), was never acknowledged and is removed at open; one whose metadata was updated was,
/// and is quarantined; one damaged on disk after the open is refused when read, with a reason
/// not worth retrying.
#[test]
fn entries_cut_short_or_damaged_are_never_sent_as_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(tmp.path()).unwrap();
    let cut = commit(&spool, b"cut short").id;
    let torn = commit(&spool, b"Subject: torn\r\n\r\nx\r\n").id;
    let updated = commit(&spool, b"Subject: updated\r\n\r\nx\r\n");
    spool.update(&updated).unwrap();
    let whole = commit(&spool, b"whole").id;
    drop(spool);
    let path = |id: QueueId| tmp.path().join(format!("{id}.msg"));
    let flip = |id: QueueId| {
        let mut bytes = std::fs::read(path(id)).unwrap();
        bytes[3] ^= 0x20;
        std::fs::write(path(id), bytes).unwrap();
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path(cut))
        .unwrap();
    file.set_len(12).unwrap();
    flip(torn);
    flip(updated.id);

    let (spool, recovered) = Spool::open(tmp.path()).unwrap();
    assert_eq!(recovered.orphans_removed, 2);
    assert!(!path(cut).exists() && !path(torn).exists());
    assert_eq!(recovered.quarantined, 1);
    assert!(
        tmp.path()
            .join("corrupt")
            .join(format!("{}.msg", updated.id))
            .exists()
    );
    let ids: Vec<QueueId> = recovered.entries.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![whole]);
    assert_eq!(spool.read_body(whole).unwrap(), b"whole");
    flip(whole);
    let err = spool.read_body(whole).unwrap_err();
    assert!(
        matches!(err, SpoolError::Damaged { .. }) && !err.is_retryable(),
        "{err}"
    );
    assert!(err.to_string().contains("checksum"), "{err}");
}

/// Spares found at open are emptied (a crash can leave one renamed before its emptying reached
/// the disk) and reused; numbering goes on after the highest; beyond the limit they are removed.
#[test]
fn spares_found_at_open_are_emptied_reused_and_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("7.spare"),
        b"a delivered message that was not yet emptied",
    )
    .unwrap();
    for number in 100..100 + 1100 {
        std::fs::write(dir.join(format!("{number}.spare")), b"").unwrap();
    }
    let (spool, recovered) = Spool::open(dir).unwrap();
    assert!(recovered.entries.is_empty());
    let spares = || {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "spare"))
            .collect::<Vec<_>>()
    };
    assert_eq!(spares().len(), 1024);
    assert!(
        spares()
            .iter()
            .all(|p| std::fs::metadata(p).unwrap().len() == 0)
    );
    let meta = commit(&spool, b"new");
    assert_eq!(spares().len(), 1023, "a spare became the entry");
    assert_eq!(spool.read_body(meta.id).unwrap(), b"new");
    drop(spool);
    // A removal past the limit unlinks; below it, the new spare is numbered after the others.
    let (spool, _) = Spool::open(dir).unwrap();
    spool.remove(meta.id).unwrap();
    assert_eq!(spares().len(), 1024);
    assert!(dir.join("1200.spare").exists());
}

/// A reused spare whose emptying never reached the disk before a crash holds another entry's
/// record: it is not this entry's commit, and neither entry is sent from it.
#[test]
fn another_entrys_record_in_an_entry_file_is_not_a_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let old = {
        let (spool, _) = Spool::open(tmp.path()).unwrap();
        commit(&spool, b"delivered before the crash").id
    };
    let new = QueueId::generate();
    std::fs::rename(
        tmp.path().join(format!("{old}.msg")),
        tmp.path().join(format!("{new}.msg")),
    )
    .unwrap();
    let (_, recovered) = Spool::open(tmp.path()).unwrap();
    assert!(recovered.entries.is_empty());
    assert_eq!((recovered.orphans_removed, recovered.quarantined), (1, 0));
}
