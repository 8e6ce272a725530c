//! Durability for the embedded store: a write-ahead journal of opaque
//! records with periodic snapshots, in the manner of Redis's AOF or etcd's
//! WAL. The store keeps answering from memory; this module only makes its
//! changes survive a restart, and knows nothing of what a record means.
//!
//! - One process per data directory: an `flock` on `LOCK` ([`lock`]).
//! - Records are framed with their length and a CRC32C, and written in
//!   batches, each one `pwrite` and one `fdatasync` by a single writer
//!   thread (group commit, [`writer`]); every appender of a batch is woken
//!   at once. [`Journal::append`] returns a [`Durable`] ticket to await;
//!   [`Journal::append_unawaited`] is for records whose durability nobody
//!   waits for (renewal checkpoints).
//! - The journal is a run of segments ([`segment`]); [`Journal::compact`]
//!   starts a new one, writes a snapshot of the state as of that boundary on
//!   its own thread ([`snapshot`]), renames it into place and removes the
//!   segments it covers.
//! - [`Journal::open`] returns the newest valid snapshot's records and
//!   every record after it ([`recovery`]). A torn final write is dropped and
//!   reported; any other damage refuses to open, naming the file, the byte
//!   offset and the option ([`TRUNCATE_OPTION`], [`JournalOptions::truncate_at`])
//!   that discards everything from there.
//! - Every batch carries the newest time the store recorded with
//!   [`Journal::record_time`], so that a restarted store never issues a time
//!   older than one it already used ([`Recovered::newest_time`]).
//!
//! On-disk format: see [`frame`].

mod frame;
mod lock;
mod recovery;
mod segment;
mod snapshot;
#[cfg(test)]
pub(super) mod tests;
mod writer;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use crate::clock::Millis;
use lock::DirLock;
use writer::{Outcome, Shared};

pub use recovery::{Records, Recovered};
pub use snapshot::{Compaction, CompactionReport, SnapshotWriter};

/// The command-line option that truncates a damaged journal, named in the
/// error that refuses to open it. The binary's flag must have this name.
pub const TRUNCATE_OPTION: &str = "--truncate-journal-at";

/// Default size at which the writer starts a new segment.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Default bound on bytes waiting for the writer: past it appends are
/// refused ([`JournalError::Backlog`]) rather than buffered without end
/// while the disk stalls.
pub const DEFAULT_MAX_PENDING_BYTES: usize = 256 << 20;

/// The default [`JournalOptions::commit_delay`]: on the 2-core machine the
/// benchmark runs on, 512 Mints in flight made batches of about 16 records
/// (one fdatasync per 0.5 ms); letting batches gather for up to 2 ms left
/// about a third as many fdatasyncs and raised durable Mint throughput from
/// 33.0K/s to 42.5K/s (README, "Durability").
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_millis(2);

/// Where to cut a damaged journal: a segment's file name and a byte offset,
/// written `FILE:OFFSET` as in the refusal's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncateAt {
    /// The segment's file name inside the data directory.
    pub file: String,
    /// The byte offset to cut at; everything from it on is discarded, and
    /// so is every later segment.
    pub offset: u64,
}

impl fmt::Display for TruncateAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.offset)
    }
}

/// Why a `--truncate-journal-at` value does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected FILE:OFFSET (a segment's file name and a byte offset), got {0:?}")]
pub struct BadTruncateAt(String);

impl FromStr for TruncateAt {
    type Err = BadTruncateAt;

    fn from_str(text: &str) -> Result<TruncateAt, BadTruncateAt> {
        let bad = || BadTruncateAt(text.to_owned());
        let (file, offset) = text.rsplit_once(':').ok_or_else(bad)?;
        if file.is_empty() || file.contains('/') {
            return Err(bad());
        }
        Ok(TruncateAt {
            file: file.to_owned(),
            offset: offset.parse().map_err(|_| bad())?,
        })
    }
}

/// A torn final write dropped at open: the batch a crash interrupted, never
/// reported durable to anyone. The store logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment it was in.
    pub file: PathBuf,
    /// Where it started; the file was truncated there.
    pub offset: u64,
    /// How many bytes were dropped.
    pub bytes_dropped: u64,
}

/// What [`JournalOptions::truncate_at`] removed. The store logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The segment cut.
    pub file: PathBuf,
    /// Where it was cut.
    pub offset: u64,
    /// Bytes discarded, in it and in the later segments.
    pub bytes_dropped: u64,
    /// Later segments removed.
    pub segments_removed: u64,
}

/// A change in the journal's ability to write, reported once per change so
/// that a full disk is logged once, not once per append.
#[derive(Debug, Clone)]
pub enum HealthEvent {
    /// Appends have started failing; each waiting appender got `error` too.
    Failing {
        /// The first failure.
        error: JournalError,
    },
    /// Appends succeed again.
    Recovered {
        /// Batches that failed since the journal opened.
        failed_batches: u64,
    },
}

/// Told of [`HealthEvent`]s, on the writer thread: it must not block.
pub type HealthCallback = Arc<dyn Fn(HealthEvent) + Send + Sync>;

/// How to open a journal.
#[derive(Clone)]
pub struct JournalOptions {
    /// Start a new segment once one holds this many bytes.
    segment_bytes: u64,
    /// Refuse appends once this many bytes wait for the writer.
    max_pending_bytes: usize,
    /// Discard a damaged journal from here on before reading it.
    truncate_at: Option<TruncateAt>,
    /// Told when appends start and stop failing.
    on_health: Option<HealthCallback>,
    /// How long a batch may wait for more appends while they keep coming.
    commit_delay: Duration,
}

impl fmt::Debug for JournalOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JournalOptions")
            .field("segment_bytes", &self.segment_bytes)
            .field("max_pending_bytes", &self.max_pending_bytes)
            .field("truncate_at", &self.truncate_at)
            .field("on_health", &self.on_health.is_some())
            .field("commit_delay", &self.commit_delay)
            .finish()
    }
}

impl Default for JournalOptions {
    fn default() -> JournalOptions {
        JournalOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
            truncate_at: None,
            on_health: None,
            commit_delay: DEFAULT_COMMIT_DELAY,
        }
    }
}

impl JournalOptions {
    /// Rotates to a new segment once one holds `bytes` (at least one batch
    /// always goes into a segment).
    pub fn segment_bytes(mut self, bytes: u64) -> JournalOptions {
        self.segment_bytes = bytes;
        self
    }

    /// Bounds the bytes waiting for the writer (and so the largest record).
    pub fn max_pending_bytes(mut self, bytes: usize) -> JournalOptions {
        self.max_pending_bytes = bytes.clamp(1 << 10, frame::MAX_BATCH_BODY);
        self
    }

    /// Before reading, cuts the named segment at the offset and removes
    /// every later segment: the operator's answer to
    /// [`JournalError::CorruptSegment`].
    pub fn truncate_at(mut self, at: Option<TruncateAt>) -> JournalOptions {
        self.truncate_at = at;
        self
    }

    /// Under load, lets a batch wait up to `delay` for more appends before
    /// it is written, for as long as they keep arriving (zero: never). One
    /// fdatasync then serves many more callers, which on a machine short
    /// of CPU buys more throughput than the wait costs; a batch that
    /// follows one of fewer than 16 records never waits, so a lone
    /// caller's latency, or a handful's, is untouched.
    pub fn commit_delay(mut self, delay: Duration) -> JournalOptions {
        self.commit_delay = delay;
        self
    }

    /// Reports appends starting and stopping to fail.
    pub fn on_health(mut self, callback: HealthCallback) -> JournalOptions {
        self.on_health = Some(callback);
        self
    }
}

/// Why the journal cannot open, or an append did not become durable.
/// Paths are the journal's own files; no record's content is ever in one.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// Another process (or another open in this one) holds the directory.
    #[error(
        "journal directory {} is in use by {}",
        .dir.display(),
        .holder.map_or_else(|| "another process".to_owned(), |pid| format!("process {pid}"))
    )]
    Locked {
        /// The data directory.
        dir: PathBuf,
        /// The holder's PID, as it wrote it into the lock file.
        holder: Option<u32>,
    },
    /// A file-system call failed (disk full, read-only, I/O error...).
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        /// What was being done, e.g. "append to".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The system's error; shared by every appender of a failed batch.
        #[source]
        source: Arc<io::Error>,
    },
    /// A segment is damaged where it cannot be a torn final write.
    #[error(
        "journal segment {} is damaged at byte {offset} ({reason}), and it is not a torn final \
         write; to discard it and everything after it, start with {TRUNCATE_OPTION} {truncate}",
        .path.display()
    )]
    CorruptSegment {
        /// The segment.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong there.
        reason: &'static str,
        /// The option value that truncates there.
        truncate: TruncateAt,
    },
    /// The newest snapshot is damaged and no older one can replace it.
    #[error(
        "journal snapshot {} is damaged at byte {offset} ({reason}), and the segments it covers \
         are gone; restore the data directory from a backup",
        .path.display()
    )]
    CorruptSnapshot {
        /// The snapshot.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong there.
        reason: &'static str,
    },
    /// A segment between the snapshot and the newest segment is missing.
    #[error("journal segment {} is missing; records in it are lost", .path.display())]
    MissingSegment {
        /// The segment that should be there.
        path: PathBuf,
    },
    /// The truncate option names no segment of the directory.
    #[error("{TRUNCATE_OPTION}: no journal segment {file} in {}", .dir.display())]
    NoSuchSegment {
        /// The data directory.
        dir: PathBuf,
        /// The file named.
        file: String,
    },
    /// A record larger than the pending bound can never be written.
    #[error("journal record of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The record's length.
        len: usize,
        /// The largest accepted.
        limit: usize,
    },
    /// The writer is this far behind: the disk has stalled.
    #[error("journal backlog exceeds {limit} bytes; the disk is not keeping up")]
    Backlog {
        /// The bound on pending bytes.
        limit: usize,
    },
    /// [`Journal::compact`] was called while a compaction runs.
    #[error("a journal compaction is already running")]
    CompactionRunning,
    /// The journal has been closed.
    #[error("the journal is closed")]
    Closed,
}

impl JournalError {
    /// An [`JournalError::Io`] about `path`.
    fn io(action: &'static str, path: &Path, source: io::Error) -> JournalError {
        JournalError::Io {
            action,
            path: path.to_path_buf(),
            source: Arc::new(source),
        }
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalStats {
    /// `fdatasync` calls on segments since open.
    pub fsyncs: u64,
    /// Batches made durable since open.
    pub batches: u64,
    /// Records made durable since open.
    pub records: u64,
    /// Batches that failed since open.
    pub failed_batches: u64,
    /// Bytes in segments not yet covered by a snapshot: compact when this
    /// grows past what recovery should replay.
    pub live_bytes: u64,
    /// The segment being appended to.
    pub segment: u64,
}

/// A handle on an open journal; cheap to clone. The writer thread stops
/// (after writing what is pending) and the directory is unlocked when the
/// last handle goes.
#[derive(Debug, Clone)]
pub struct Journal {
    /// Shared by the handles.
    inner: Arc<Inner>,
}

/// What the handles share.
#[derive(Debug)]
struct Inner {
    /// Shared with the writer and compaction threads.
    shared: Arc<Shared>,
    /// Joined on drop.
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The directory's lock; a compaction thread holds it too.
    lock: Arc<DirLock>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.request_shutdown();
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
    }
}

impl Journal {
    /// Opens (creating if need be) the journal in `dir`, which must exist,
    /// and returns what it holds. Fails if another process has it open,
    /// or if it is damaged other than by a torn final write.
    pub fn open(
        dir: impl AsRef<Path>,
        options: JournalOptions,
    ) -> Result<(Journal, Recovered), JournalError> {
        let dir = dir.as_ref().to_path_buf();
        let lock = Arc::new(DirLock::acquire(&dir)?);
        let opened = recovery::recover(&dir, options.truncate_at.as_ref())?;
        let clock = opened.recovered.newest_time().unwrap_or(0);
        let shared = Arc::new(Shared::new(
            dir,
            clock,
            options.max_pending_bytes,
            options.on_health,
        ));
        shared
            .counters
            .live_bytes
            .store(opened.live_bytes, Ordering::Relaxed);
        let writer = writer::spawn(
            shared.clone(),
            opened.segment,
            options.segment_bytes,
            options.commit_delay,
        )?;
        let journal = Journal {
            inner: Arc::new(Inner {
                shared,
                writer: Mutex::new(Some(writer)),
                lock,
            }),
        };
        Ok((journal, opened.recovered))
    }

    /// Appends a record; the ticket says when it is durable. The record is
    /// in the journal's order as of this call, after every record appended
    /// before it returned.
    pub fn append(&self, payload: &[u8]) -> Durable {
        Durable {
            outcome: self
                .inner
                .shared
                .submit(payload, true)
                .map(|outcome| outcome.expect("asked for the outcome")),
        }
    }

    /// Appends a record nobody waits for: it rides with the next batch. An
    /// error here means it was not even queued.
    pub fn append_unawaited(&self, payload: &[u8]) -> Result<(), JournalError> {
        self.inner.shared.submit(payload, false).map(drop)
    }

    /// Records that the store has used time `now`; every later batch
    /// carries the newest such time. Call it before appending a record whose
    /// meaning depends on `now`, so that the record's batch carries it.
    pub fn record_time(&self, now: Millis) {
        self.inner.shared.clock.fetch_max(now, Ordering::AcqRel);
    }

    /// Writes a batch now even if nothing is pending, so that the newest
    /// recorded time is durable; the ticket says when it is.
    pub fn sync(&self) -> Durable {
        Durable {
            outcome: self.inner.shared.force_batch(),
        }
    }

    /// Compacts: starts a new segment, then on a thread of its own calls
    /// `produce` to write the store's state as a snapshot, renames it into
    /// place and removes the segments before the boundary. Appends go on
    /// meanwhile. `produce` must see every change whose record was appended
    /// before it runs (apply to memory, then append), and replaying a record
    /// whose effect the snapshot already holds must be harmless: records
    /// appended while it runs are replayed over it.
    pub fn compact<F>(&self, produce: F) -> Result<Compaction, JournalError>
    where
        F: FnOnce(&mut SnapshotWriter<'_>) -> io::Result<()> + Send + 'static,
    {
        snapshot::spawn(
            self.inner.shared.clone(),
            self.inner.lock.clone(),
            Box::new(produce),
        )
    }

    /// Counters since open.
    pub fn stats(&self) -> JournalStats {
        let counters = &self.inner.shared.counters;
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        JournalStats {
            fsyncs: load(&counters.fsyncs),
            batches: load(&counters.batches),
            records: load(&counters.records),
            failed_batches: load(&counters.failed_batches),
            live_bytes: load(&counters.live_bytes),
            segment: load(&counters.segment),
        }
    }

    /// The writer's fault injection, for the store's tests.
    #[cfg(test)]
    pub(crate) fn faults(&self) -> &tests::Faults {
        &self.inner.shared.faults
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }
}

/// Says when an appended record is durable. Dropping it does not cancel the
/// append; a clone waits for the same record.
#[derive(Debug, Clone)]
#[must_use = "a record is not known durable until `durable` returns Ok"]
pub struct Durable {
    /// The outcome of the record's batch, or why it was not queued.
    outcome: Result<Arc<Outcome<()>>, JournalError>,
}

impl Durable {
    /// Waits until the record's batch is synced; an error means it is not
    /// known durable (it may or may not be found after a restart).
    pub async fn durable(self) -> Result<(), JournalError> {
        self.outcome?.wait().await
    }

    /// Like [`Durable::durable`], blocking this thread.
    pub fn wait_blocking(self) -> Result<(), JournalError> {
        self.outcome?.wait_blocking()
    }
}
