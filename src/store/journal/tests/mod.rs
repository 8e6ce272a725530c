//! The journal against real files in temporary directories.

mod bench;
mod compaction;
mod damage;
mod lock_and_disk;

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

/// Test hook: makes the next segment writes or syncs fail, as a full or
/// failing disk would.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// Writes still to fail.
    writes: AtomicU32,
    /// Syncs still to fail.
    syncs: AtomicU32,
    /// Held by a test to stop the writer before its next sync, so that
    /// appends made meanwhile are all pending at once.
    sync_gate: parking_lot::Mutex<()>,
    /// Syncs waiting at the gate.
    syncs_held: AtomicU32,
}

impl Faults {
    /// Fails the next `n` writes with `EIO`.
    pub(crate) fn fail_writes(&self, n: u32) {
        self.writes.store(n, Ordering::SeqCst);
    }

    /// Fails the next `n` syncs with `EIO`.
    pub(crate) fn fail_syncs(&self, n: u32) {
        self.syncs.store(n, Ordering::SeqCst);
    }

    /// Called before each segment write.
    pub(super) fn before_write(&self) -> io::Result<()> {
        take(&self.writes)
    }

    /// Stops every sync at the gate until the guard drops.
    pub(crate) fn hold_syncs(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.sync_gate.lock()
    }

    /// How many syncs wait at the gate.
    pub(crate) fn syncs_held(&self) -> u32 {
        self.syncs_held.load(Ordering::SeqCst)
    }

    /// Called before each segment sync.
    pub(super) fn before_sync(&self) -> io::Result<()> {
        if self.sync_gate.try_lock().is_none() {
            self.syncs_held.fetch_add(1, Ordering::SeqCst);
            drop(self.sync_gate.lock());
            self.syncs_held.fetch_sub(1, Ordering::SeqCst);
        }
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
use std::time::Instant;

use super::frame::{read_batch, FILE_HEADER_LEN};
use super::*;

/// Held for reading while a test opens a journal, for writing while one
/// starts a process: a child holds a copy of every descriptor (the lock
/// file's too) between fork and exec, so a reopen racing a spawn in another
/// test would find the directory locked.
static SPAWNS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Starts a process, never while a journal opens.
fn spawning<T>(start: impl FnOnce() -> T) -> T {
    let _guard = SPAWNS.write().unwrap_or_else(|e| e.into_inner());
    start()
}

/// [`Journal::open`], never while a process starts.
fn open_with(
    dir: impl AsRef<Path>,
    options: JournalOptions,
) -> Result<(Journal, Recovered), JournalError> {
    let _guard = SPAWNS.read().unwrap_or_else(|e| e.into_inner());
    Journal::open(dir, options)
}

/// Opens `dir` with default options.
fn open(dir: &Path) -> (Journal, Recovered) {
    open_with(dir, JournalOptions::default()).expect("open the journal")
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

/// A segment's salt and every batch in its bytes, in order.
fn segment_batches(bytes: &[u8]) -> (u32, Vec<frame::Batch>) {
    let salt = frame::decode_file_header(frame::FileKind::Segment, bytes)
        .unwrap()
        .salt;
    let mut at = FILE_HEADER_LEN;
    let mut batches = Vec::new();
    while at < bytes.len() {
        let batch = read_batch(bytes, at, salt).expect("a valid batch");
        at = batch.end();
        batches.push(batch);
    }
    (salt, batches)
}

/// The end offset and record count of every batch in a segment file.
fn batch_ends(path: &Path) -> Vec<(usize, u32)> {
    let (_, batches) = segment_batches(&fs::read(path).unwrap());
    batches
        .iter()
        .map(|batch| (batch.end(), batch.header.count))
        .collect()
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

/// Catches: a writer that, having seen a large batch, waits out the whole
/// commit delay instead of stopping once appends stop coming (here the
/// delay is an hour: the lone append after the burst would never finish).
#[test]
fn a_gathering_batch_is_written_once_appends_stop_coming() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions::default().commit_delay(Duration::from_secs(3600));
    let (journal, _) = open_with(dir.path(), options).unwrap();
    const BURST: usize = 64;
    // It is the last batch that decides whether the next one gathers, so
    // the test makes one of BURST records on purpose: the writer is held
    // at its sync of a first record while the burst is appended, so the
    // whole burst is pending at once and becomes the next batch (left to
    // the scheduler, 64 threads on a busy CI machine sometimes never made
    // a batch of 16).
    let gate = journal.faults().hold_syncs();
    let first = journal.append(&record(0));
    let deadline = Instant::now() + Duration::from_secs(20);
    while journal.faults().syncs_held() == 0 {
        assert!(
            Instant::now() < deadline,
            "the writer never reached its sync"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let burst: Vec<_> = (1..=BURST).map(|i| journal.append(&record(i))).collect();
    drop(gate);
    first.wait_blocking().unwrap();
    for durable in burst {
        durable.wait_blocking().unwrap();
    }
    let appended = BURST + 1;
    assert!(
        last_batch_count(dir.path()) >= 16,
        "no burst ended with a batch of 16 or more, for the next to gather"
    );
    let (done, finished) = std::sync::mpsc::channel();
    let lone = journal.clone();
    let lone = std::thread::spawn(move || {
        let written = lone.append(&record(appended)).wait_blocking();
        drop(lone);
        done.send(written)
    });
    finished
        .recv_timeout(Duration::from_secs(20))
        .expect("the lone append is written without waiting out the delay")
        .unwrap();
    lone.join().unwrap().unwrap();
    drop(journal);
    let (_journal, recovered) = open(dir.path());
    assert_eq!(payloads(&recovered).len(), appended + 1);
}

/// The record count of the newest batch of the journal in `dir`.
fn last_batch_count(dir: &Path) -> u32 {
    let segment = segments(dir).pop().expect("a segment");
    batch_ends(&segment).last().map_or(0, |&(_, count)| count)
}

/// Writes `durable` records one batch each through the journal, then
/// `torn` more as one final batch; returns the segment's path.
fn journal_with_last_batches(dir: &Path, durable: usize, torn: usize) -> PathBuf {
    let (journal, _) = open(dir);
    for i in 0..durable {
        journal.append(&record(i)).wait_blocking().unwrap();
    }
    drop(journal);
    let found = segments(dir);
    assert_eq!(found.len(), 1);
    let segment = found[0].clone();
    if torn > 0 {
        append_one_batch(&segment, durable..durable + torn);
    }
    segment
}

/// Appends `records` to a closed segment as one batch, the shape the writer
/// gives appends that reach it together. Built here on purpose: whether the
/// writer coalesces concurrent appends depends on scheduling, and a test of
/// a torn multi-record batch must not.
fn append_one_batch(segment: &Path, records: std::ops::Range<usize>) {
    let mut bytes = fs::read(segment).unwrap();
    let (salt, batches) = segment_batches(&bytes);
    let clock = batches.last().map_or(0, |batch| batch.header.clock);
    let count = records.len() as u32;
    let mut batch = vec![0; frame::BATCH_HEADER_LEN];
    for i in records {
        let payload = record(i);
        frame::push_record(&mut batch, &payload, frame::record_crc(&payload));
    }
    frame::seal_batch(&mut batch, count, clock, salt);
    bytes.extend_from_slice(&batch);
    fs::write(segment, bytes).unwrap();
}
