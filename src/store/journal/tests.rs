//! The journal against real files in temporary directories.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

/// Test hook: makes the next segment writes or syncs fail, as a full or
/// failing disk would.
#[derive(Debug, Default)]
pub(super) struct Faults {
    /// Writes still to fail.
    writes: AtomicU32,
    /// Syncs still to fail.
    syncs: AtomicU32,
}

impl Faults {
    /// Fails the next `n` writes with `EIO`.
    pub(super) fn fail_writes(&self, n: u32) {
        self.writes.store(n, Ordering::SeqCst);
    }

    /// Fails the next `n` syncs with `EIO`.
    pub(super) fn fail_syncs(&self, n: u32) {
        self.syncs.store(n, Ordering::SeqCst);
    }

    /// Called before each segment write.
    pub(super) fn before_write(&self) -> io::Result<()> {
        take(&self.writes)
    }

    /// Called before each segment sync.
    pub(super) fn before_sync(&self) -> io::Result<()> {
        take(&self.syncs)
    }
}

/// Fails once if `counter` is positive, counting it down.
fn take(counter: &AtomicU32) -> io::Result<()> {
    let failed = counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failed {
        Err(io::Error::from_raw_os_error(libc::EIO))
    } else {
        Ok(())
    }
}

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier, Mutex};

use super::frame::{read_batch, FILE_HEADER_LEN};
use super::*;

/// Opens `dir` with default options.
fn open(dir: &Path) -> (Journal, Recovered) {
    Journal::open(dir, JournalOptions::default()).expect("open the journal")
}

/// The recovered records, copied.
fn payloads(recovered: &Recovered) -> Vec<Vec<u8>> {
    recovered.records().map(<[u8]>::to_vec).collect()
}

/// A recognisable record.
fn record(i: usize) -> Vec<u8> {
    format!("record {i:05} {}", "x".repeat(i % 37)).into_bytes()
}

/// The journal's segment files, in order.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    found.sort();
    found
}

/// The end offset and record count of every batch in a segment file.
fn batch_ends(path: &Path) -> Vec<(usize, u32)> {
    let bytes = fs::read(path).unwrap();
    let salt = frame::decode_file_header(frame::FileKind::Segment, &bytes)
        .unwrap()
        .salt;
    let mut at = FILE_HEADER_LEN;
    let mut ends = Vec::new();
    while at < bytes.len() {
        let batch = read_batch(&bytes, at, salt).expect("a valid batch");
        at = batch.end();
        ends.push((at, batch.header.count));
    }
    ends
}

#[test]
fn records_and_time_survive_a_restart_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, recovered) = open(dir.path());
    assert!(recovered.is_empty());
    assert_eq!(recovered.newest_time(), None);
    for i in 0..100 {
        journal.record_time(1_000 + i as u64);
        journal.append(&record(i)).wait_blocking().unwrap();
    }
    journal.record_time(50); // older: must not win
    journal.append(b"").wait_blocking().unwrap();
    for i in 100..110 {
        journal.append_unawaited(&record(i)).unwrap();
    }
    drop(journal); // writes what is pending before it stops

    let (journal, recovered) = open(dir.path());
    let mut expected: Vec<Vec<u8>> = (0..100).map(record).collect();
    expected.push(Vec::new());
    expected.extend((100..110).map(record));
    assert_eq!(payloads(&recovered), expected);
    assert_eq!(recovered.len(), 111);
    assert_eq!(recovered.newest_time(), Some(1_099));
    assert_eq!(recovered.torn_tail(), None);
    assert_eq!(journal.stats().fsyncs, 0, "opening writes nothing");
}

#[test]
fn sync_makes_a_recorded_time_durable_without_any_record() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path());
    journal.record_time(7_777);
    journal.sync().wait_blocking().unwrap();
    assert_eq!(journal.stats().fsyncs, 1);
    drop(journal);
    let (_journal, recovered) = open(dir.path());
    assert!(recovered.is_empty());
    assert_eq!(recovered.newest_time(), Some(7_777));
}

#[test]
fn concurrent_appenders_share_fsyncs_and_keep_their_order() {
    const THREADS: usize = 64;
    const EACH: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path());
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (journal, barrier) = (journal.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..EACH {
                    let payload = format!("{t:03}:{i:03}");
                    journal
                        .append(payload.as_bytes())
                        .wait_blocking()
                        .expect("every appender is woken with success");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let stats = journal.stats();
    let total = (THREADS * EACH) as u64;
    assert_eq!(stats.records, total);
    assert!(
        stats.fsyncs * 4 <= total,
        "{} fsyncs for {total} appends: no group commit",
        stats.fsyncs
    );
    drop(journal);

    let (_journal, recovered) = open(dir.path());
    let mut next = [0usize; THREADS];
    for payload in recovered.records() {
        let text = std::str::from_utf8(payload).unwrap();
        let (t, i) = text.split_once(':').unwrap();
        let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
        assert_eq!(i, next[t], "appender {t}'s records out of order");
        next[t] += 1;
    }
    assert_eq!(next, [EACH; THREADS]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_async_appenders_are_all_woken() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path());
    let tasks: Vec<_> = (0..512)
        .map(|i| {
            let journal = journal.clone();
            tokio::spawn(async move { journal.append(&record(i)).durable().await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let stats = journal.stats();
    assert_eq!(stats.records, 512);
    assert!(
        stats.fsyncs < 128,
        "{} fsyncs for 512 appends",
        stats.fsyncs
    );
}

/// Writes `durable` records one batch each, then `torn` records as fast as
/// possible (so the writer gathers them into few batches); returns the
/// segment's path.
fn journal_with_last_batches(dir: &Path, durable: usize, torn: usize) -> PathBuf {
    let (journal, _) = open(dir);
    for i in 0..durable {
        journal.append(&record(i)).wait_blocking().unwrap();
    }
    let tickets: Vec<_> = (durable..durable + torn)
        .map(|i| journal.append(&record(i)))
        .collect();
    for ticket in tickets {
        ticket.wait_blocking().unwrap();
    }
    drop(journal);
    let found = segments(dir);
    assert_eq!(found.len(), 1);
    found[0].clone()
}

#[test]
fn a_torn_final_write_is_dropped_at_every_byte_offset() {
    let dir = tempfile::tempdir().unwrap();
    let segment = journal_with_last_batches(dir.path(), 3, 12);
    let ends = batch_ends(&segment);
    let last_batch_start = ends[ends.len() - 2].0;
    assert!(
        ends.last().unwrap().1 > 1,
        "the last batch must hold several records"
    );
    let whole = fs::read(&segment).unwrap();
    for cut in last_batch_start..=whole.len() {
        fs::write(&segment, &whole[..cut]).unwrap();
        let (journal, recovered) = Journal::open(dir.path(), JournalOptions::default())
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let complete: Vec<_> = ends.iter().take_while(|(end, _)| *end <= cut).collect();
        let kept_end = complete.last().unwrap().0;
        let kept: u32 = complete.iter().map(|(_, count)| count).sum();
        let expected: Vec<_> = (0..kept as usize).map(record).collect();
        assert_eq!(payloads(&recovered), expected, "cut at {cut}");
        match recovered.torn_tail() {
            None => assert_eq!(cut, kept_end, "cut at {cut} not reported"),
            Some(torn) => {
                assert_eq!(torn.file, segment);
                assert_eq!(torn.offset, kept_end as u64);
                assert_eq!(torn.bytes_dropped, (cut - kept_end) as u64);
            }
        }
        drop(journal);
        assert_eq!(fs::metadata(&segment).unwrap().len(), kept_end as u64);
    }
}

#[test]
fn a_final_write_whose_first_page_is_lost_is_torn_not_corrupt() {
    // Pages of one write may reach the disk in any order: the last batch's
    // header lost while its later records made it is still a torn write.
    let dir = tempfile::tempdir().unwrap();
    let segment = journal_with_last_batches(dir.path(), 3, 40);
    let ends = batch_ends(&segment);
    let last_batch_start = ends[ends.len() - 2].0;
    let kept: u32 = ends[..ends.len() - 1].iter().map(|(_, c)| c).sum();
    let mut bytes = fs::read(&segment).unwrap();
    bytes[last_batch_start..last_batch_start + 40].fill(0);
    fs::write(&segment, &bytes).unwrap();

    let (_journal, recovered) = open(dir.path());
    assert_eq!(payloads(&recovered).len(), kept as usize);
    let torn = recovered.torn_tail().expect("reported");
    assert_eq!(torn.offset, last_batch_start as u64);
}

#[test]
fn damage_followed_by_valid_records_refuses_until_truncated_there() {
    let dir = tempfile::tempdir().unwrap();
    let segment = journal_with_last_batches(dir.path(), 6, 0);
    let ends = batch_ends(&segment);
    let damaged_start = ends[2].0; // the fourth batch
    let mut bytes = fs::read(&segment).unwrap();
    bytes[damaged_start + 30] ^= 0x40;
    fs::write(&segment, &bytes).unwrap();

    let error = Journal::open(dir.path(), JournalOptions::default()).unwrap_err();
    let JournalError::CorruptSegment {
        path,
        offset,
        truncate,
        ..
    } = &error
    else {
        panic!("expected CorruptSegment, got {error}");
    };
    assert_eq!(path, &segment);
    assert_eq!(*offset, damaged_start as u64);
    let name = segment.file_name().unwrap().to_str().unwrap();
    let option = format!("{TRUNCATE_OPTION} {name}:{damaged_start}");
    assert!(error.to_string().contains(&option), "{error}");
    assert_eq!(
        fs::read(&segment).unwrap(),
        bytes,
        "refusing touches nothing"
    );

    let at: TruncateAt = truncate.to_string().parse().unwrap();
    let options = JournalOptions::default().truncate_at(Some(at));
    let (journal, recovered) = Journal::open(dir.path(), options).unwrap();
    assert_eq!(payloads(&recovered), (0..3).map(record).collect::<Vec<_>>());
    let truncation = recovered.truncation().expect("reported");
    assert_eq!(
        truncation.bytes_dropped,
        (bytes.len() - damaged_start) as u64
    );
    journal.append(b"after").wait_blocking().unwrap();
    drop(journal);
    let (_journal, recovered) = open(dir.path());
    let mut expected: Vec<_> = (0..3).map(record).collect();
    expected.push(b"after".to_vec());
    assert_eq!(payloads(&recovered), expected);
}

#[test]
fn damage_at_the_end_of_an_earlier_segment_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions::default().segment_bytes(200);
    let (journal, _) = Journal::open(dir.path(), options.clone()).unwrap();
    for i in 0..20 {
        journal.append(&record(i)).wait_blocking().unwrap();
    }
    drop(journal);
    let found = segments(dir.path());
    assert!(found.len() > 2, "{} segments", found.len());
    let first = &found[0];
    let mut bytes = fs::read(first).unwrap();
    let len = bytes.len();
    bytes[len - 1] ^= 1; // its last batch: nothing valid follows in the file
    fs::write(first, &bytes).unwrap();
    let start = batch_ends_lenient(&bytes);
    match Journal::open(dir.path(), options) {
        Err(JournalError::CorruptSegment { path, offset, .. }) => {
            assert_eq!(&path, first);
            assert_eq!(offset, start as u64);
        }
        other => panic!("expected CorruptSegment, got {other:?}"),
    }
}

/// Where the last batch of a damaged segment starts.
fn batch_ends_lenient(bytes: &[u8]) -> usize {
    let salt = frame::decode_file_header(frame::FileKind::Segment, bytes)
        .unwrap()
        .salt;
    let mut at = FILE_HEADER_LEN;
    while let Ok(batch) = read_batch(bytes, at, salt) {
        at = batch.end();
    }
    at
}

#[test]
fn a_second_open_of_the_directory_fails_naming_it_and_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path());
    let error = Journal::open(dir.path(), JournalOptions::default()).unwrap_err();
    match &error {
        JournalError::Locked {
            dir: locked,
            holder,
        } => {
            assert_eq!(locked, dir.path());
            assert_eq!(*holder, Some(std::process::id()));
        }
        other => panic!("expected Locked, got {other}"),
    }
    assert!(error
        .to_string()
        .contains(&dir.path().display().to_string()));

    // Another process sees the lock too.
    let lock = dir.path().join(lock::LOCK_FILE);
    let try_lock = || {
        Command::new("flock")
            .args(["-n", "-E", "42"])
            .arg(&lock)
            .arg("true")
            .status()
            .expect("run flock(1)")
            .code()
    };
    assert_eq!(try_lock(), Some(42), "another process took the lock");
    drop(journal);
    assert_eq!(try_lock(), Some(0), "the lock outlived the journal");
    drop(open(dir.path()));
}

#[test]
fn a_killed_holder_leaves_no_stale_lock() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join(lock::LOCK_FILE);
    fs::write(&lock, "").unwrap();
    // The shell takes the lock on a descriptor of its own, then becomes
    // `sleep`: one process holds it, and SIGKILL ends that process.
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg("exec 9>>\"$0\" && flock -n 9 && echo locked && exec sleep 30")
        .arg(&lock)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    io::BufRead::read_line(
        &mut io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "locked\n");
    assert!(matches!(
        Journal::open(dir.path(), JournalOptions::default()),
        Err(JournalError::Locked { .. })
    ));
    holder.kill().unwrap(); // SIGKILL
    holder.wait().unwrap();
    Journal::open(dir.path(), JournalOptions::default()).expect("the lock died with its holder");
}

#[test]
fn compaction_removes_covered_segments_and_recovery_yields_snapshot_then_tail() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions::default().segment_bytes(512);
    let (journal, _) = Journal::open(dir.path(), options.clone()).unwrap();
    // The "store": its state is the set of records so far.
    let state = Arc::new(Mutex::new(Vec::new()));
    for i in 0..60 {
        state.lock().unwrap().push(record(i));
        journal.record_time(10_000 + i as u64);
        journal.append(&record(i)).wait_blocking().unwrap();
    }
    let before = segments(dir.path());
    assert!(before.len() > 3, "{} segments", before.len());
    let live_before = journal.stats().live_bytes;

    let started = Arc::new(Barrier::new(2));
    let resume = Arc::new(Barrier::new(2));
    let snapshot_state = state.clone();
    let (started_in, resume_in) = (started.clone(), resume.clone());
    let compaction = journal
        .compact(move |out| {
            let records = snapshot_state.lock().unwrap().clone();
            started_in.wait();
            // Appends go on while the snapshot is written.
            resume_in.wait();
            out.record(b"snapshot header")?;
            records.iter().try_for_each(|r| out.record(r))
        })
        .unwrap();
    started.wait();
    assert!(matches!(
        journal.compact(|_| Ok(())),
        Err(JournalError::CompactionRunning)
    ));
    for i in 60..70 {
        journal.append(&record(i)).wait_blocking().unwrap();
    }
    resume.wait();
    let report = compaction.wait_blocking().unwrap();
    assert_eq!(report.records, 61);
    assert!(report.files_removed >= before.len() as u64);
    for old in &before {
        assert!(!old.exists(), "{} was not removed", old.display());
    }
    assert!(journal.stats().live_bytes < live_before);
    drop(journal);

    let (journal, recovered) = Journal::open(dir.path(), options).unwrap();
    assert_eq!(recovered.snapshot(), Some(report.snapshot.as_path()));
    let mut expected = vec![b"snapshot header".to_vec()];
    expected.extend((0..60).map(record));
    expected.extend((60..70).map(record));
    assert_eq!(payloads(&recovered), expected);
    assert_eq!(recovered.newest_time(), Some(10_059));
    drop(journal);

    // Compacting again replaces the snapshot.
    let (journal, _) = open(dir.path());
    let second = journal.compact(|out| out.record(b"second")).unwrap();
    let second = second.wait_blocking().unwrap();
    assert!(!report.snapshot.exists());
    drop(journal);
    let (_journal, recovered) = open(dir.path());
    assert_eq!(recovered.snapshot(), Some(second.snapshot.as_path()));
    assert_eq!(payloads(&recovered), vec![b"second".to_vec()]);
    assert_eq!(
        recovered.newest_time(),
        Some(10_059),
        "the snapshot keeps the time"
    );
}

#[test]
fn a_crash_during_compaction_leaves_a_usable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path());
    for i in 0..5 {
        journal.append(&record(i)).wait_blocking().unwrap();
    }
    // The closure fails as a crash would stop it: the snapshot is never
    // renamed into place.
    let failed = journal.compact(|out| {
        out.record(b"half")?;
        Err(io::Error::other("crash"))
    });
    assert!(failed.unwrap().wait_blocking().is_err());
    journal.append(&record(5)).wait_blocking().unwrap();
    drop(journal);
    // A leftover temporary snapshot, as if the process died mid-write.
    let leftover = dir.path().join("snapshot-00000000000000000009.snap.tmp");
    fs::write(&leftover, b"partial").unwrap();

    let (_journal, recovered) = open(dir.path());
    assert_eq!(recovered.snapshot(), None);
    assert_eq!(payloads(&recovered), (0..6).map(record).collect::<Vec<_>>());
    assert!(!leftover.exists());
}

#[test]
fn a_damaged_snapshot_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path());
    journal.append(b"one").wait_blocking().unwrap();
    let report = journal
        .compact(|out| out.record(b"state"))
        .unwrap()
        .wait_blocking()
        .unwrap();
    drop(journal);
    let mut bytes = fs::read(&report.snapshot).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1; // the seal
    fs::write(&report.snapshot, &bytes).unwrap();
    match Journal::open(dir.path(), JournalOptions::default()) {
        Err(JournalError::CorruptSnapshot { path, .. }) => assert_eq!(path, report.snapshot),
        other => panic!("expected CorruptSnapshot, got {other:?}"),
    }
}

/// Collects health events.
fn health_log() -> (HealthCallback, Arc<Mutex<Vec<HealthEvent>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let callback: HealthCallback = Arc::new(move |event| sink.lock().unwrap().push(event));
    (callback, log)
}

#[test]
fn a_failing_disk_fails_the_batch_reports_once_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (callback, log) = health_log();
    let options = JournalOptions::default().on_health(callback);
    let (journal, _) = Journal::open(dir.path(), options).unwrap();
    journal.append(b"before").wait_blocking().unwrap();

    journal.inner.shared.faults.fail_syncs(1);
    let error = journal
        .append(b"lost to fsync")
        .wait_blocking()
        .unwrap_err();
    assert!(
        matches!(&error, JournalError::Io { source, .. } if source.raw_os_error() == Some(libc::EIO))
    );
    journal.inner.shared.faults.fail_writes(1);
    journal
        .append(b"lost to write")
        .wait_blocking()
        .unwrap_err();
    assert_eq!(log.lock().unwrap().len(), 1, "reported once");
    assert!(matches!(
        log.lock().unwrap()[0],
        HealthEvent::Failing { .. }
    ));

    journal.append(b"after").wait_blocking().unwrap();
    assert!(matches!(
        log.lock().unwrap()[1],
        HealthEvent::Recovered { failed_batches: 2 }
    ));
    drop(journal);
    let (_journal, recovered) = open(dir.path());
    assert_eq!(
        payloads(&recovered),
        vec![b"before".to_vec(), b"after".to_vec()],
        "a failed batch stays out of the file"
    );
}

/// A tiny tmpfs, unmounted on drop.
struct TinyDisk {
    /// Where it is mounted.
    mount: PathBuf,
    /// Keeps the mount point alive.
    _parent: tempfile::TempDir,
}

impl TinyDisk {
    /// Mounts one, if this process may (it runs as root here and in CI).
    fn mount(bytes: usize) -> Option<TinyDisk> {
        let parent = tempfile::tempdir().unwrap();
        let mount = parent.path().join("disk");
        fs::create_dir(&mount).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&mount)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(TinyDisk {
            mount,
            _parent: parent,
        })
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

#[test]
fn a_full_disk_fails_appends_until_space_returns() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let disk = TinyDisk::mount(256 << 10).expect("mount a tmpfs");
    let dir = disk.mount.join("data");
    fs::create_dir(&dir).unwrap();
    let (callback, log) = health_log();
    let options = JournalOptions::default().on_health(callback);
    let (journal, _) = Journal::open(&dir, options).unwrap();
    journal.append(b"before").wait_blocking().unwrap();

    let filler = disk.mount.join("filler");
    let mut file = fs::File::create(&filler).unwrap();
    let chunk = vec![7u8; 4096];
    while io::Write::write_all(&mut file, &chunk).is_ok() {}
    drop(file);
    let big = vec![1u8; 64 << 10];
    let error = journal.append(&big).wait_blocking().unwrap_err();
    assert!(
        matches!(&error, JournalError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC)),
        "{error}"
    );
    assert_eq!(log.lock().unwrap().len(), 1);

    fs::remove_file(&filler).unwrap();
    journal.append(b"after").wait_blocking().unwrap();
    assert_eq!(log.lock().unwrap().len(), 2);
    drop(journal);
    let (journal, recovered) = Journal::open(&dir, JournalOptions::default()).unwrap();
    assert_eq!(
        payloads(&recovered),
        vec![b"before".to_vec(), b"after".to_vec()]
    );
    drop(journal);
    drop(disk);
}

#[test]
fn oversized_records_and_truncate_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions::default().max_pending_bytes(4096);
    let (journal, _) = Journal::open(dir.path(), options).unwrap();
    let error = journal.append(&[0; 5000]).wait_blocking().unwrap_err();
    assert!(matches!(error, JournalError::TooLarge { len: 5000, .. }));
    assert!("journal-1.log".parse::<TruncateAt>().is_err());
    assert!("../x:5".parse::<TruncateAt>().is_err());
    let at: TruncateAt = "journal-00000000000000000001.log:77".parse().unwrap();
    assert_eq!(at.offset, 77);
    let options = JournalOptions::default().truncate_at(Some("journal-9.log:1".parse().unwrap()));
    drop(journal);
    assert!(matches!(
        Journal::open(dir.path(), options),
        Err(JournalError::NoSuchSegment { .. })
    ));
}
