//! The embedded store made durable: its changes go to the write-ahead
//! [`journal`](super::journal) in the order memory applies them, renewals
//! are checkpointed, snapshots compact the journal, and a restart replays
//! it all.
//!
//! - Order of writes. A revocation applies in memory, then appends under
//!   the same lock, then waits for the disk: it is refused at once and made
//!   durable before the call returns. A Mint puts its record in memory
//!   *pending* (invisible, see [`super::record::Record::visible`]), appends,
//!   waits, and only then replaces the earlier credentials and shows the new
//!   one; a failed write removes it without a trace. Appends happen under
//!   the locks that order the changes in memory (the thread's shard lock;
//!   the revocation lock for Mint's epoch stamp and RevokeAll), so replaying
//!   the journal in its order rebuilds what memory held.
//! - Renewals are not journaled per Resolve: a bit per slot ([`used`])
//!   says which records were used, and every checkpoint interval their
//!   latest uses go out as one record, costing what was used, not what is
//!   live.
//! - Compaction writes a snapshot of the state as of a boundary while calls
//!   go on ([`snapshot`]); records after the boundary replay over it
//!   ([`replay`]).
//! - Time. Every batch carries the newest time the store used. A restarted
//!   store never runs behind it, and a downtime of up to [`RESTART_GRACE`]
//!   does not count towards any credential's deadlines.

mod backup;
pub(super) mod event;
mod replay;
mod snapshot;
#[cfg(test)]
mod tests;
mod used;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::journal::{
    CompactionReport, Durable, HealthCallback, Journal, JournalError, JournalOptions, TornTail,
    TruncateAt, Truncation,
};
use super::record::Record;
use super::types::{DeathReason, Rejection};
use super::{Store, StoreConfig};
use crate::clock::{AnchoredClock, Clock, Millis};
use crate::token::CredentialId;
pub use backup::{restore_backup, RestoreError, Restored};
use event::{CredentialFields, Writer};
pub(super) use used::UsedSlots;

/// A downtime up to this long kills no credential: one that was live when
/// the store stopped and whose deadline passed while it was down has its
/// deadlines moved on by the downtime, up to this much; every other
/// deadline stays exactly as it was. So an upgrade or a crash and restart
/// within a minute logs no agent out, while a store down for a day does
/// not keep day-idle credentials alive.
pub const RESTART_GRACE: Duration = Duration::from_secs(60);

/// Renewals per checkpoint record: bounds one record's size (24 bytes
/// each, about 100 KiB), far below the journal's record limit.
const USES_PER_RECORD: usize = 4096;

/// How the durable embedded store keeps its data.
#[derive(Clone)]
pub struct DurableOptions {
    /// The data directory (created if missing).
    pub dir: PathBuf,
    /// How often the latest uses of credentials are written.
    pub renewal_checkpoint: Duration,
    /// Compact once the journal after the last snapshot holds this many
    /// bytes (and more than the snapshot itself).
    pub compact_after_bytes: u64,
    /// The journal's own options (segment size, backlog bound, truncation,
    /// health reports).
    pub journal: JournalOptions,
}

impl std::fmt::Debug for DurableOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableOptions")
            .field("dir", &self.dir)
            .field("renewal_checkpoint", &self.renewal_checkpoint)
            .field("compact_after_bytes", &self.compact_after_bytes)
            .field("journal", &self.journal)
            .finish()
    }
}

impl DurableOptions {
    /// The defaults for `dir`: a checkpoint every second, compaction past
    /// 64 MiB of journal.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DurableOptions {
            dir: dir.into(),
            renewal_checkpoint: Duration::from_secs(1),
            compact_after_bytes: 64 << 20,
            journal: JournalOptions::default(),
        }
    }

    /// Truncates a damaged journal (the operator's `--truncate-journal-at`).
    pub fn truncate_at(mut self, at: Option<TruncateAt>) -> Self {
        self.journal = self.journal.truncate_at(at);
        self
    }

    /// Reports the journal starting and stopping to fail.
    pub fn on_health(mut self, callback: HealthCallback) -> Self {
        self.journal = self.journal.on_health(callback);
        self
    }
}

/// What opening a durable store found.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Records read back (snapshot and journal).
    pub records: u64,
    /// Credential records held after replay, live or dead but not yet swept.
    pub credentials: u64,
    /// Whether recovery started from a snapshot.
    pub from_snapshot: bool,
    /// A torn final write that was dropped.
    pub torn_tail: Option<TornTail>,
    /// What the truncate option removed.
    pub truncation: Option<Truncation>,
    /// How far the given clock was behind the newest time the store had
    /// used; the store runs ahead of it by that much.
    pub clock_behind: Duration,
    /// How long the store was down, as far as the journal tells (since its
    /// newest recorded time).
    pub downtime: Duration,
    /// How long reading and replaying took.
    pub elapsed: Duration,
}

/// Why a durable store could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The journal could not be opened (locked, damaged, unreadable).
    #[error("{0}")]
    Journal(#[from] JournalError),
    /// A record passed its checksum but does not decode: a bug or a data
    /// directory written by a newer version.
    #[error("data directory {}: {error}", .dir.display())]
    Undecodable {
        /// The data directory.
        dir: PathBuf,
        /// What is wrong.
        error: event::DecodeError,
    },
}

/// The store's handle on its journal, and what a checkpoint and a snapshot
/// need besides the records.
pub(super) struct Durability {
    pub(super) journal: Journal,
    /// The clock the store runs on, for re-anchoring.
    clock: Arc<AnchoredClock>,
    options: DurableOptions,
    /// The ids a pending Mint replaces, by the new credential's id: a
    /// snapshot taken while the Mint waits must carry them.
    pub(super) pending_replacements: Mutex<HashMap<CredentialId, Vec<(CredentialId, DeathReason)>>>,
    /// Bytes of the newest snapshot, so compaction waits for the journal to
    /// outgrow it.
    snapshot_bytes: Mutex<u64>,
    /// The checkpointer started a compaction that has not finished.
    compacting: AtomicBool,
}

impl Durability {
    /// Appends a record written by `write`, made at `now`.
    pub(super) fn append(&self, now: Millis, write: impl FnOnce(&mut Writer<'_>)) -> Durable {
        self.journal.append(&self.payload(now, write))
    }

    /// Appends a record nobody waits for (see [`Journal::append_unawaited`]).
    pub(super) fn append_unawaited(
        &self,
        now: Millis,
        write: impl FnOnce(&mut Writer<'_>),
    ) -> Result<(), JournalError> {
        self.journal.append_unawaited(&self.payload(now, write))
    }

    /// A record written by `write`, made at `now`; its batch will carry
    /// that time.
    fn payload(&self, now: Millis, write: impl FnOnce(&mut Writer<'_>)) -> Vec<u8> {
        let mut payload = Vec::with_capacity(96);
        write(&mut Writer(&mut payload));
        self.journal.record_time(now);
        payload
    }
}

/// Creates `dir` (and its parents) if missing, mode 0700: it holds token
/// digests and who minted what. A new directory's entry is made durable in
/// its parent.
fn create_private_dir(dir: &Path) -> Result<(), JournalError> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    let failed = |action, e| JournalError::Io {
        action,
        path: dir.to_path_buf(),
        source: Arc::new(e),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| failed("create the data directory", e))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)
            .and_then(|parent| parent.sync_all())
            .map_err(|e| failed("sync the parent of", e))?;
    }
    Ok(())
}

/// A Mint's journal record.
pub(super) fn minted_payload(record: &Record, replaced: &[(CredentialId, DeathReason)]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(160 + record.thread_id.len());
    write_record(&mut Writer(&mut payload), record, replaced);
    payload
}

/// Writes `record` as a Minted record.
fn write_record(w: &mut Writer<'_>, record: &Record, replaced: &[(CredentialId, DeathReason)]) {
    let class = &*record.class;
    w.minted(
        CredentialFields {
            digest: &record.digest,
            credential_id: &record.credential_id,
            created_at: record.created_at,
            last_used: record.last_used.load(Ordering::Acquire),
            minted_epoch: record.minted_epoch,
            idle_timeout: class.idle_timeout,
            max_lifetime: class.max_lifetime,
            absolute_lifetime: class.absolute_lifetime,
            claims: class.pair.claims(),
            thread_id: &record.thread_id,
            minted_by: &class.pair.owner.name,
            instance_id: &class.pair.instance_id,
            provider_kind: class.provider_kind.as_deref(),
        },
        class.scopes.iter().map(|s| &**s),
        class.labels.iter().map(|(k, v)| (&**k, &**v)),
        replaced,
    );
}

/// The refusal for a change the journal could not make durable.
pub(super) fn unavailable(error: &JournalError) -> Rejection {
    let what = match error {
        JournalError::Backlog { .. } => "the data directory's disk is not keeping up",
        JournalError::Closed => "the store is shutting down",
        _ => "the data directory cannot be written (disk full, read-only or failing)",
    };
    Rejection::Unavailable { what }
}

impl Store {
    /// Opens the durable embedded store in `options.dir`: takes the
    /// directory's lock (a second process is refused), replays the newest
    /// snapshot and the journal after it, and runs on `clock` raised to the
    /// newest time the store had used. No background task runs until
    /// [`Store::spawn_sweeper`] and [`Store::spawn_checkpointer`].
    pub fn open(
        config: StoreConfig,
        clock: Arc<dyn Clock>,
        options: DurableOptions,
    ) -> Result<(Store, Recovery), OpenError> {
        let started = Instant::now();
        create_private_dir(&options.dir)?;
        let (journal, recovered) = Journal::open(&options.dir, options.journal.clone())?;
        let newest = recovered.newest_time().unwrap_or(0);
        let clock = Arc::new(AnchoredClock::new(clock, newest));
        let now = clock.now();
        let clock_behind = Duration::from_millis(clock.behind_by());
        let durability = Durability {
            journal,
            clock: clock.clone(),
            options: options.clone(),
            pending_replacements: Mutex::new(HashMap::new()),
            snapshot_bytes: Mutex::new(0),
            compacting: AtomicBool::new(false),
        };
        let store = Store::build(config, clock, Some(durability));
        let downtime = now.saturating_sub(newest);
        let grace = downtime.min(RESTART_GRACE.as_millis() as Millis);
        let replayed =
            replay::restore(&store.shared, &recovered, newest, grace).map_err(|error| {
                OpenError::Undecodable {
                    dir: options.dir.clone(),
                    error,
                }
            })?;
        // Before any change of this run: a crash from here on is not
        // mistaken for the clean stop that may end the journal.
        if let Some(durable) = &store.shared.durable {
            durable
                .append(now, |w| w.opened(now))
                .wait_blocking()
                .map_err(OpenError::Journal)?;
        }
        let recovery = Recovery {
            records: replayed,
            credentials: store.record_count() as u64,
            from_snapshot: recovered.snapshot().is_some(),
            torn_tail: recovered.torn_tail().cloned(),
            truncation: recovered.truncation().cloned(),
            clock_behind,
            downtime: if newest == 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(downtime)
            },
            elapsed: started.elapsed(),
        };
        Ok((store, recovery))
    }

    /// Whether this store keeps a journal.
    pub fn is_durable(&self) -> bool {
        self.shared.durable.is_some()
    }

    /// Writes the latest uses of every credential used since the last
    /// checkpoint, without waiting for the disk; returns how many. What the
    /// checkpointer does every interval; the cost is in proportion to the
    /// credentials used, not to those held.
    pub fn checkpoint_renewals(&self) -> Result<usize, Rejection> {
        let shared = &*self.shared;
        let Some(durable) = &shared.durable else {
            return Ok(0);
        };
        let now = shared.clock.now();
        durable.journal.record_time(now);
        let mut uses = Vec::new();
        let mut written = 0;
        let mut payload = Vec::new();
        let mut flush = |uses: &mut Vec<(CredentialId, Millis)>| -> Result<(), Rejection> {
            if uses.is_empty() {
                return Ok(());
            }
            payload.clear();
            Writer(&mut payload).renewed(uses);
            written += uses.len();
            uses.clear();
            durable
                .journal
                .append_unawaited(&payload)
                .map_err(|e| unavailable(&e))
        };
        for shard in shared.records.iter() {
            let shard = shard.read();
            shard.used.drain(|slot| {
                if let Some(record) = shard.at(slot) {
                    uses.push((
                        record.credential_id,
                        record.last_used.load(Ordering::Acquire),
                    ));
                }
            });
            drop(shard);
            while uses.len() >= USES_PER_RECORD {
                let rest = uses.split_off(USES_PER_RECORD);
                flush(&mut uses)?;
                uses = rest;
            }
        }
        flush(&mut uses)?;
        Ok(written)
    }

    /// Makes everything appended so far durable, with the current time.
    pub async fn sync(&self) -> Result<(), Rejection> {
        let Some(durable) = &self.shared.durable else {
            return Ok(());
        };
        durable.journal.record_time(self.shared.clock.now());
        durable
            .journal
            .sync()
            .durable()
            .await
            .map_err(|e| unavailable(&e))
    }

    /// A clean stop: the latest uses and the time, durable. After it, a
    /// restart finds every deadline exactly as it was.
    pub async fn close(&self) -> Result<(), Rejection> {
        self.checkpoint_renewals()?;
        if let Some(durable) = &self.shared.durable {
            let now = self.shared.clock.now();
            durable
                .append(now, |w| w.closed(now))
                .durable()
                .await
                .map_err(|e| unavailable(&e))?;
        }
        Ok(())
    }

    /// Compacts now: writes a snapshot and removes the journal it covers.
    /// Calls go on meanwhile.
    pub async fn compact(&self) -> Result<CompactionReport, Rejection> {
        let Some(durable) = &self.shared.durable else {
            return Err(Rejection::Unavailable {
                what: "the memory store keeps no journal",
            });
        };
        let shared = self.shared.clone();
        let compaction = durable
            .journal
            .compact(move |writer| snapshot::write(&shared, writer))
            .map_err(|e| unavailable(&e))?;
        let report = compaction.finished().await.map_err(|e| unavailable(&e))?;
        *durable.snapshot_bytes.lock() = report.bytes;
        Ok(report)
    }

    /// Starts the checkpointer on the current tokio runtime: every renewal
    /// checkpoint interval it re-anchors the clock, writes the latest uses
    /// and the time, and compacts when the journal has grown. It stops when
    /// the returned guard drops. A no-op on the memory store.
    pub fn spawn_checkpointer(&self) -> CheckpointerGuard {
        let stop = Arc::new(tokio::sync::Notify::new());
        if let Some(durable) = &self.shared.durable {
            let store = self.clone();
            let interval = durable.options.renewal_checkpoint;
            let stopped = stop.clone();
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = ticks.tick() => store.checkpoint_tick().await,
                        () = stopped.notified() => return,
                    }
                }
            });
        }
        CheckpointerGuard { stop }
    }

    /// One checkpointer round.
    async fn checkpoint_tick(&self) {
        let Some(durable) = &self.shared.durable else {
            return;
        };
        if let Some(jump) = durable.clock.reanchor() {
            tracing::warn!(
                jump_ms = jump,
                "the wall clock moved ahead of the store's clock; re-anchored forward"
            );
        }
        // Failures are the journal's to report (once, by its health
        // callback); the next tick retries.
        if self.checkpoint_renewals().is_ok() {
            let _reported_by_health = self.sync().await;
        }
        let stats = durable.journal.stats();
        let snapshot_bytes = *durable.snapshot_bytes.lock();
        if stats.live_bytes > durable.options.compact_after_bytes.max(snapshot_bytes)
            && !durable.compacting.swap(true, Ordering::AcqRel)
        {
            let store = self.clone();
            tokio::spawn(async move {
                let outcome = store.compact().await;
                if let Some(durable) = &store.shared.durable {
                    durable.compacting.store(false, Ordering::Release);
                }
                match outcome {
                    Ok(report) => tracing::info!(
                        records = report.records,
                        bytes = report.bytes,
                        files_removed = report.files_removed,
                        "journal compacted"
                    ),
                    Err(error) => tracing::warn!(%error, "journal compaction failed"),
                }
            });
        }
    }
}

/// Stops the checkpointer when dropped.
#[derive(Debug)]
pub struct CheckpointerGuard {
    stop: Arc<tokio::sync::Notify>,
}

impl Drop for CheckpointerGuard {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}
