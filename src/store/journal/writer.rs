//! Group commit: appenders hand encoded records to one OS thread, which
//! writes each batch with one `write` and one `fdatasync`, then wakes every
//! appender of that batch at once.
//!
//! Appenders compute their record's CRC on their own thread, then take the
//! [`Pending`] lock only to copy the frame into the batch being filled and
//! to clone that batch's [`Outcome`]. The writer swaps the whole buffer out
//! under the same lock, so appenders never wait for the disk, and a batch
//! holds whatever arrived while the previous `fdatasync` ran: the slower the
//! disk, the bigger the batches.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;

use super::frame::{push_record, seal_batch, FileKind, BATCH_HEADER_LEN};
use super::segment::NewFile;
use super::{HealthCallback, HealthEvent, JournalError};

/// The result of one batch (or one rotation, or one compaction), waited on
/// by any number of appenders, async or blocking.
#[derive(Debug)]
pub(super) struct Outcome<T> {
    /// Set once by whoever finishes the work.
    slot: Mutex<Option<Result<T, JournalError>>>,
    /// Wakes blocking waiters.
    ready: Condvar,
    /// Wakes async waiters.
    notify: Notify,
}

impl<T: Clone> Outcome<T> {
    /// An outcome not yet known.
    pub(super) fn new() -> Arc<Outcome<T>> {
        Arc::new(Outcome {
            slot: Mutex::new(None),
            ready: Condvar::new(),
            notify: Notify::new(),
        })
    }

    /// Records the result and wakes every waiter; a second call is ignored.
    pub(super) fn finish(&self, result: Result<T, JournalError>) {
        let mut slot = self.slot.lock();
        if slot.is_none() {
            *slot = Some(result);
            self.ready.notify_all();
            self.notify.notify_waiters();
        }
    }

    /// The result, if known.
    pub(super) fn peek(&self) -> Option<Result<T, JournalError>> {
        self.slot.lock().clone()
    }

    /// Waits for the result, blocking this thread.
    pub(super) fn wait_blocking(&self) -> Result<T, JournalError> {
        let mut slot = self.slot.lock();
        loop {
            if let Some(result) = slot.as_ref() {
                return result.clone();
            }
            self.ready.wait(&mut slot);
        }
    }

    /// Waits for the result without blocking the runtime's thread.
    pub(super) async fn wait(&self) -> Result<T, JournalError> {
        loop {
            // Registered before the check, so a `finish` between the check
            // and the await still wakes us.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(result) = self.peek() {
                return result;
            }
            notified.await;
        }
    }
}

/// Where the journal is: the segment number of a boundary and the newest
/// time recorded when it was crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Boundary {
    /// The first segment after the boundary.
    pub(super) seq: u64,
    /// The newest time recorded before it.
    pub(super) clock: u64,
}

/// A batch lets more appends join it (see `Writer::gather`) only after one
/// of at least this many records, a sign of many concurrent writers: a lone
/// caller's write, or a handful's, never waits.
const GATHER_AFTER: u32 = 16;

/// A batch this full is written without waiting any longer.
const GATHER_FULL: u32 = 256;

/// A batch being gathered is written once no append has joined it for this
/// long: the callers who were coming have come.
const LULL: Duration = Duration::from_micros(200);

/// The batch being filled, and requests for the writer.
#[derive(Debug)]
pub(super) struct Pending {
    /// Record frames after [`BATCH_HEADER_LEN`] reserved bytes.
    buf: Vec<u8>,
    /// Records in `buf`.
    count: u32,
    /// What this batch's appenders wait on.
    outcome: Arc<Outcome<()>>,
    /// Write a batch even if it holds no record (to make the clock durable).
    force: bool,
    /// Start a new segment after the next batch, and say where.
    rotate: Option<Arc<Outcome<Boundary>>>,
    /// The journal is closing: write what is pending, then stop.
    shutdown: bool,
    /// Set while the writer sleeps on [`Shared::wake`], so appenders signal
    /// it only when that is needed.
    writer_idle: bool,
    /// The buffer of the previous batch, returned for reuse.
    spare: Vec<u8>,
    /// Set while the writer lets the batch grow (see `Writer::gather`):
    /// appenders wake it only when the batch is full, other requests at
    /// once.
    gathering: bool,
    /// Set when the writer has stopped: every later append fails with it.
    stopped: Option<JournalError>,
}

impl Pending {
    /// Whether a request wants the batch written without delay.
    fn urgent(&self) -> bool {
        self.force || self.rotate.is_some() || self.shutdown
    }

    /// An empty batch.
    fn new() -> Pending {
        Pending {
            buf: vec![0; BATCH_HEADER_LEN],
            count: 0,
            outcome: Outcome::new(),
            force: false,
            rotate: None,
            shutdown: false,
            writer_idle: false,
            spare: Vec::new(),
            gathering: false,
            stopped: None,
        }
    }
}

/// Counters, read by [`super::Journal::stats`] and the tests.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// `fdatasync` calls on segments.
    pub(super) fsyncs: AtomicU64,
    /// Batches made durable.
    pub(super) batches: AtomicU64,
    /// Records made durable.
    pub(super) records: AtomicU64,
    /// Batches that failed.
    pub(super) failed_batches: AtomicU64,
    /// Bytes in the segments not yet covered by a snapshot.
    pub(super) live_bytes: AtomicU64,
    /// The current segment's number.
    pub(super) segment: AtomicU64,
}

/// What appenders, the writer and compaction share.
pub(super) struct Shared {
    /// The data directory.
    pub(super) dir: PathBuf,
    /// The batch being filled.
    pub(super) pending: Mutex<Pending>,
    /// Wakes the writer.
    wake: Condvar,
    /// The newest time the store recorded; every batch carries it.
    pub(super) clock: AtomicU64,
    /// Counters.
    pub(super) counters: Counters,
    /// Refuse an append that would make the pending batch larger.
    max_pending: usize,
    /// Told when appends start failing and when they succeed again.
    on_health: Option<HealthCallback>,
    /// A compaction is running.
    pub(super) compacting: AtomicBool,
    /// Test hook: fail the next segment writes or syncs.
    #[cfg(test)]
    pub(super) faults: super::tests::Faults,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("dir", &self.dir)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// State for a journal in `dir` whose newest recorded time is `clock`.
    pub(super) fn new(
        dir: PathBuf,
        clock: u64,
        max_pending: usize,
        on_health: Option<HealthCallback>,
    ) -> Shared {
        Shared {
            dir,
            pending: Mutex::new(Pending::new()),
            wake: Condvar::new(),
            clock: AtomicU64::new(clock),
            counters: Counters::default(),
            max_pending,
            on_health,
            compacting: AtomicBool::new(false),
            #[cfg(test)]
            faults: Default::default(),
        }
    }

    /// Adds one record to the batch being filled; returns that batch's
    /// outcome if `want_outcome`.
    pub(super) fn submit(
        &self,
        payload: &[u8],
        want_outcome: bool,
    ) -> Result<Option<Arc<Outcome<()>>>, JournalError> {
        let frame_len = super::frame::RECORD_HEADER_LEN + payload.len();
        if frame_len > self.max_pending {
            return Err(JournalError::TooLarge {
                len: payload.len(),
                limit: self.max_pending - super::frame::RECORD_HEADER_LEN,
            });
        }
        let crc = super::frame::record_crc(payload);
        let mut pending = self.pending.lock();
        if let Some(stopped) = &pending.stopped {
            return Err(stopped.clone());
        }
        if pending.buf.len() + frame_len > self.max_pending + BATCH_HEADER_LEN {
            return Err(JournalError::Backlog {
                limit: self.max_pending,
            });
        }
        push_record(&mut pending.buf, payload, crc);
        pending.count += 1;
        let outcome = want_outcome.then(|| pending.outcome.clone());
        if pending.gathering {
            if pending.count >= GATHER_FULL {
                self.wake.notify_one();
            }
        } else {
            self.signal(&mut pending);
        }
        Ok(outcome)
    }

    /// Asks for a batch now, even an empty one; returns its outcome.
    pub(super) fn force_batch(&self) -> Result<Arc<Outcome<()>>, JournalError> {
        let mut pending = self.pending.lock();
        if let Some(stopped) = &pending.stopped {
            return Err(stopped.clone());
        }
        pending.force = true;
        let outcome = pending.outcome.clone();
        self.signal(&mut pending);
        Ok(outcome)
    }

    /// Asks the writer to start a new segment after the pending batch.
    pub(super) fn request_rotation(&self) -> Result<Arc<Outcome<Boundary>>, JournalError> {
        let mut pending = self.pending.lock();
        if let Some(stopped) = &pending.stopped {
            return Err(stopped.clone());
        }
        let outcome = pending.rotate.get_or_insert_with(Outcome::new).clone();
        self.signal(&mut pending);
        Ok(outcome)
    }

    /// Tells the writer to finish and stop.
    pub(super) fn request_shutdown(&self) {
        let mut pending = self.pending.lock();
        pending.shutdown = true;
        self.signal(&mut pending);
    }

    /// Wakes the writer if it sleeps.
    fn signal(&self, pending: &mut Pending) {
        if pending.writer_idle || pending.gathering {
            pending.writer_idle = false;
            self.wake.notify_one();
        }
    }

    /// Reports a change between failing and working appends.
    fn report(&self, event: HealthEvent) {
        if let Some(on_health) = &self.on_health {
            on_health(event);
        }
    }
}

/// The segment the writer appends to.
#[derive(Debug)]
pub(super) struct ActiveSegment {
    /// The open file.
    pub(super) file: File,
    /// Its path, for errors.
    pub(super) path: PathBuf,
    /// Its number.
    pub(super) seq: u64,
    /// Its salt, for batch headers.
    pub(super) salt: u32,
    /// Bytes known durable; the next batch goes here.
    pub(super) len: u64,
}

/// The writer thread's own state.
struct Writer {
    /// Shared with appenders.
    shared: Arc<Shared>,
    /// Where batches go.
    segment: ActiveSegment,
    /// Rotate once a segment holds this many bytes.
    segment_bytes: u64,
    /// A failed batch may have left bytes past `segment.len`; they must go
    /// before anything else is written.
    dirty_tail: bool,
    /// Appends are failing (reported once, until one succeeds).
    failing: bool,
    /// How long a batch may wait for more appends under load (zero: never).
    commit_delay: Duration,
}

/// Starts the writer thread on `segment`.
pub(super) fn spawn(
    shared: Arc<Shared>,
    segment: ActiveSegment,
    segment_bytes: u64,
    commit_delay: Duration,
) -> Result<std::thread::JoinHandle<()>, JournalError> {
    shared
        .counters
        .segment
        .store(segment.seq, Ordering::Relaxed);
    let dir = shared.dir.clone();
    let mut writer = Writer {
        shared,
        segment,
        segment_bytes,
        dirty_tail: false,
        failing: false,
        commit_delay,
    };
    std::thread::Builder::new()
        .name("journal-writer".into())
        .spawn(move || writer.run())
        .map_err(|e| JournalError::io("start the writer thread for", &dir, e))
}

impl Writer {
    /// Writes batches until told to stop.
    fn run(&mut self) {
        let _stop = StopOnExit(self.shared.clone());
        let mut last_count = 0u32;
        loop {
            let mut pending = self.shared.pending.lock();
            while pending.count == 0 && !pending.force && pending.rotate.is_none() {
                if pending.shutdown {
                    return;
                }
                pending.writer_idle = true;
                self.shared.wake.wait(&mut pending);
            }
            if !self.commit_delay.is_zero() && last_count >= GATHER_AFTER {
                self.gather(&mut pending);
            }
            let write = pending.count > 0 || pending.force;
            let spare = std::mem::take(&mut pending.spare);
            let mut batch = std::mem::replace(&mut pending.buf, spare);
            if pending.buf.is_empty() {
                pending.buf.resize(BATCH_HEADER_LEN, 0);
            }
            let count = std::mem::take(&mut pending.count);
            last_count = count;
            let outcome = std::mem::replace(&mut pending.outcome, Outcome::new());
            pending.force = false;
            let rotate = pending.rotate.take();
            // Read under the lock: a time recorded before an append that
            // is in this batch is seen here.
            let clock = self.shared.clock.load(Ordering::Acquire);
            drop(pending);

            if write {
                let result = self.write_batch(&mut batch, count, clock);
                self.account(&result, count);
                outcome.finish(result);
            } else {
                outcome.finish(Ok(()));
            }
            batch.truncate(BATCH_HEADER_LEN);
            self.shared.pending.lock().spare = batch;

            if rotate.is_some() || self.segment.len >= self.segment_bytes {
                let result = self.rotate(clock);
                if let Some(rotate) = rotate {
                    rotate.finish(result);
                }
            }
        }
    }

    /// Lets a batch grow while appends keep arriving: waits until none has
    /// come for [`LULL`], the batch holds [`GATHER_FULL`] records, someone
    /// needs the batch now (a forced batch, a rotation, shutdown), or the
    /// commit delay has passed since the first wait.
    fn gather(&self, pending: &mut parking_lot::MutexGuard<'_, Pending>) {
        let Some(deadline) = Instant::now().checked_add(self.commit_delay) else {
            return;
        };
        pending.gathering = true;
        loop {
            let before = pending.count;
            let now = Instant::now();
            if now >= deadline || before >= GATHER_FULL || pending.urgent() {
                break;
            }
            let until = deadline.min(now + LULL);
            self.shared.wake.wait_until(pending, until);
            if pending.count == before {
                break;
            }
        }
        pending.gathering = false;
    }

    /// Writes one batch at the durable end of the segment and syncs it; on
    /// failure nothing past the durable end is left behind, if it can be
    /// helped.
    fn write_batch(
        &mut self,
        batch: &mut [u8],
        count: u32,
        clock: u64,
    ) -> Result<(), JournalError> {
        let io = |action, e| JournalError::io(action, &self.segment.path, e);
        if self.dirty_tail {
            self.segment
                .file
                .set_len(self.segment.len)
                .map_err(|e| io("truncate the failed batch from", e))?;
            self.dirty_tail = false;
        }
        seal_batch(batch, count, clock, self.segment.salt);
        let written = self.write_and_sync(batch);
        if let Err(e) = written {
            self.dirty_tail = self.segment.file.set_len(self.segment.len).is_err();
            return Err(io("append to", e));
        }
        self.segment.len += batch.len() as u64;
        self.shared
            .counters
            .live_bytes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// One `pwrite` of the whole batch, one `fdatasync`.
    fn write_and_sync(&self, batch: &[u8]) -> std::io::Result<()> {
        #[cfg(test)]
        self.shared.faults.before_write()?;
        self.segment.file.write_all_at(batch, self.segment.len)?;
        #[cfg(test)]
        self.shared.faults.before_sync()?;
        self.shared.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.segment.file.sync_data()
    }

    /// Counts a batch and reports a change of health.
    fn account(&mut self, result: &Result<(), JournalError>, count: u32) {
        let counters = &self.shared.counters;
        match result {
            Ok(()) => {
                counters.batches.fetch_add(1, Ordering::Relaxed);
                counters
                    .records
                    .fetch_add(u64::from(count), Ordering::Relaxed);
                if self.failing {
                    self.failing = false;
                    self.shared.report(HealthEvent::Recovered {
                        failed_batches: counters.failed_batches.load(Ordering::Relaxed),
                    });
                }
            }
            Err(error) => {
                counters.failed_batches.fetch_add(1, Ordering::Relaxed);
                if !self.failing {
                    self.failing = true;
                    self.shared.report(HealthEvent::Failing {
                        error: error.clone(),
                    });
                }
            }
        }
    }

    /// Starts the next segment; later batches go there.
    fn rotate(&mut self, clock: u64) -> Result<Boundary, JournalError> {
        if self.dirty_tail {
            self.segment
                .file
                .set_len(self.segment.len)
                .and_then(|()| self.segment.file.sync_all())
                .map_err(|e| JournalError::io("truncate", &self.segment.path, e))?;
            self.dirty_tail = false;
        }
        let seq = self.segment.seq + 1;
        let salt = rand::random();
        let new = NewFile::create(&self.shared.dir, FileKind::Segment, seq, salt)?;
        let (file, path) = new.install(&self.shared.dir)?;
        let len = super::frame::FILE_HEADER_LEN as u64;
        self.segment = ActiveSegment {
            file,
            path,
            seq,
            salt,
            len,
        };
        let counters = &self.shared.counters;
        counters.live_bytes.fetch_add(len, Ordering::Relaxed);
        counters.segment.store(seq, Ordering::Relaxed);
        Ok(Boundary { seq, clock })
    }
}

/// Fails every later append, and anything still waiting, once the writer
/// stops, whether it was told to or panicked.
struct StopOnExit(Arc<Shared>);

impl Drop for StopOnExit {
    fn drop(&mut self) {
        let mut pending = self.0.pending.lock();
        pending.stopped = Some(JournalError::Closed);
        pending.outcome.finish(Err(JournalError::Closed));
        if let Some(rotate) = pending.rotate.take() {
            rotate.finish(Err(JournalError::Closed));
        }
    }
}
