//! Compaction: a snapshot of the store's state as of a segment boundary,
//! written on its own thread while appends go on, then the segments it
//! covers removed.
//!
//! The writer first starts a new segment (the boundary); only then does the
//! store's closure run. Every record in the segments before the boundary was
//! appended before the closure started, so a store that applies a change to
//! memory before appending its record finds it in memory; records appended
//! while the closure runs land after the boundary and are replayed over the
//! snapshot, so replaying a record whose effect the snapshot already shows
//! must be harmless (mint and revoke by id are).

use std::fs::File;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::frame::{push_record, record_crc, seal_batch, FileKind, BATCH_HEADER_LEN, SEAL_COUNT};
use super::lock::DirLock;
use super::segment::{self, NewFile};
use super::writer::{Outcome, Shared};
use super::JournalError;

/// A snapshot batch is written once it holds this many bytes.
const SNAPSHOT_BATCH_BYTES: usize = 1 << 20;

/// Receives the snapshot's records from the store's closure.
#[derive(Debug)]
pub struct SnapshotWriter<'a> {
    /// The snapshot file, under its temporary name.
    file: &'a mut File,
    /// The batch being filled, after its reserved header.
    batch: Vec<u8>,
    /// Records in `batch`.
    count: u32,
    /// The file's salt.
    salt: u32,
    /// The newest time recorded before the boundary.
    clock: u64,
    /// Records written so far.
    records: u64,
}

impl SnapshotWriter<'_> {
    /// Adds one record to the snapshot.
    pub fn record(&mut self, payload: &[u8]) -> io::Result<()> {
        if payload.len() > u32::MAX as usize / 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "snapshot record too large",
            ));
        }
        push_record(&mut self.batch, payload, record_crc(payload));
        self.count += 1;
        self.records += 1;
        if self.batch.len() >= SNAPSHOT_BATCH_BYTES {
            self.write_batch()?;
        }
        Ok(())
    }

    /// Writes the batch being filled, if it holds anything.
    fn write_batch(&mut self) -> io::Result<()> {
        if self.count > 0 {
            seal_batch(&mut self.batch, self.count, self.clock, self.salt);
            self.file.write_all(&self.batch)?;
            self.batch.truncate(BATCH_HEADER_LEN);
            self.count = 0;
        }
        Ok(())
    }

    /// Writes the last batch and the seal that marks the snapshot whole.
    fn finish(mut self) -> io::Result<u64> {
        self.write_batch()?;
        let mut seal = [0u8; BATCH_HEADER_LEN];
        seal_batch(&mut seal, SEAL_COUNT, self.clock, self.salt);
        self.file.write_all(&seal)?;
        Ok(self.records)
    }
}

/// What a finished compaction did; the store may log it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactionReport {
    /// The snapshot written.
    pub snapshot: PathBuf,
    /// Records in it.
    pub records: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// Segments (and older snapshots) removed.
    pub files_removed: u64,
}

/// A compaction under way; see [`super::Journal::compact`].
#[derive(Debug, Clone)]
pub struct Compaction {
    /// Set when the compaction thread ends.
    outcome: Arc<Outcome<CompactionReport>>,
}

impl Compaction {
    /// Waits for the compaction to finish.
    pub async fn finished(&self) -> Result<CompactionReport, JournalError> {
        self.outcome.wait().await
    }

    /// Waits for the compaction to finish, blocking this thread.
    pub fn wait_blocking(&self) -> Result<CompactionReport, JournalError> {
        self.outcome.wait_blocking()
    }
}

/// The store's closure producing a snapshot's records.
pub(super) type Produce = Box<dyn FnOnce(&mut SnapshotWriter<'_>) -> io::Result<()> + Send>;

/// Starts a compaction thread; refuses if one is already running.
pub(super) fn spawn(
    shared: Arc<Shared>,
    lock: Arc<DirLock>,
    produce: Produce,
) -> Result<Compaction, JournalError> {
    if shared.compacting.swap(true, Ordering::AcqRel) {
        return Err(JournalError::CompactionRunning);
    }
    let outcome = Outcome::new();
    let finished = outcome.clone();
    let thread_shared = shared.clone();
    let started = std::thread::Builder::new()
        .name("journal-compact".into())
        .spawn(move || {
            // Holds the directory while it writes there, even if the
            // journal is dropped meanwhile; released before the result is
            // told, so a caller that then reopens finds it free.
            let result = compact(&thread_shared, produce);
            thread_shared.compacting.store(false, Ordering::Release);
            drop(lock);
            finished.finish(result);
        });
    if let Err(e) = started {
        shared.compacting.store(false, Ordering::Release);
        return Err(JournalError::io(
            "start the compaction thread for",
            &shared.dir,
            e,
        ));
    }
    Ok(Compaction { outcome })
}

/// Rotates, writes the snapshot, renames it into place, then removes what
/// it covers.
fn compact(shared: &Shared, produce: Produce) -> Result<CompactionReport, JournalError> {
    let boundary = shared.request_rotation()?.wait_blocking()?;
    let dir = &shared.dir;
    let salt = rand::random();
    let mut new = NewFile::create(dir, FileKind::Snapshot, boundary.seq, salt)?;
    let mut writer = SnapshotWriter {
        file: &mut new.file,
        batch: vec![0; BATCH_HEADER_LEN],
        count: 0,
        salt,
        clock: boundary.clock,
        records: 0,
    };
    let written = produce(&mut writer).and_then(|()| writer.finish());
    let records = match written {
        Ok(records) => records,
        Err(e) => {
            let error = JournalError::io("write the snapshot", &new.path, e);
            new.abandon();
            return Err(error);
        }
    };
    let (file, snapshot) = new.install(dir)?;
    let bytes = file
        .metadata()
        .map_err(|e| JournalError::io("stat", &snapshot, e))?
        .len();

    let listing = segment::list(dir)?;
    let covered: Vec<PathBuf> = listing
        .segments
        .range(..boundary.seq)
        .map(|(_, p)| p.clone())
        .collect();
    let covered_bytes: u64 = covered
        .iter()
        .filter_map(|p| p.metadata().ok())
        .map(|m| m.len())
        .sum();
    let older_snapshots = listing.snapshots.range(..boundary.seq).map(|(_, p)| p);
    let files_removed = segment::remove_all(dir, covered.iter().chain(older_snapshots))?;
    // Saturating: live bytes count only what the writer appended since open.
    let _ = shared
        .counters
        .live_bytes
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |live| {
            Some(live.saturating_sub(covered_bytes))
        });
    Ok(CompactionReport {
        snapshot,
        records,
        bytes,
        files_removed,
    })
}
