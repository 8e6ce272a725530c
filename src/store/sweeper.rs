//! Deadlines and the sweeper that removes what has died.
//!
//! Each record shard queues its records' deadlines; Mint pushes under the
//! shard lock it holds anyway, and a renewal does not move the entry: when
//! it falls due, the sweeper re-reads the record and re-queues it if its
//! deadline slid. So the sweeper's cost grows with what falls due, not with
//! what is live, and Resolve never touches a queue. Removing one record
//! from its thread is constant time (see [`super::threads`]), so a sweep
//! costs what falls due, whatever the shape of the threads.
//!
//! RevokeAll kills records without visiting them, and their queued
//! deadlines may be half an hour away; since the store's budgets count the
//! records held, the sweeper also reclaims them ([`Reclaim`]): a RevokeAll
//! that ended something asks for one pass over every shard, in bounded
//! batches with yields between them, each batch reading one shard under
//! its read lock (Resolve goes on) and removing what it found dead one
//! record at a time.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::slab::Handle;
use super::{Retired, Shared, SHARDS};
use crate::clock::Millis;

/// How many due deadlines the sweeper handles per batch, so that a mass
/// expiry never holds a shard (and so Resolve) for long and the sweeper
/// yields to RPC work between batches.
const SWEEP_BATCH: usize = 1024;

/// How many slots one reclaim batch reads under one shard's read lock.
const RECLAIM_BATCH: u32 = 4096;

/// The longest the sweeper sleeps without re-checking, as a safety net against
/// a missed wake-up.
const MAX_SWEEPER_SLEEP: Duration = Duration::from_secs(60);

/// A queued sweeper deadline, ordered by time only.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadline {
    pub(super) at: Millis,
    pub(super) handle: Handle,
}

impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Deadline {}

impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.at.cmp(&other.at)
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Dead records removed.
    pub removed: usize,
    /// Live records whose deadline had slid and were queued again.
    pub requeued: usize,
    /// Records killed by RevokeAll removed by the reclaim pass.
    pub reclaimed: usize,
}

/// The reclaim passes RevokeAll asks for: each pass reads every shard once
/// and removes what is dead. A RevokeAll during a pass asks for another,
/// since the pass may have read the records it killed before it did.
#[derive(Default)]
pub(super) struct Reclaim {
    /// Passes asked for, counted.
    wanted: AtomicU64,
    /// The pass under way, one at a time.
    pass: Mutex<ReclaimPass>,
}

/// Where the reclaim pass is.
#[derive(Default)]
struct ReclaimPass {
    /// The count of `Reclaim::wanted` the latest finished pass answered.
    done: u64,
    /// The pass under way: the count it answers and the next shard and
    /// slot it reads.
    at: Option<(u64, usize, u32)>,
}

impl Reclaim {
    /// Asks for a pass (RevokeAll ended something).
    pub(super) fn request(&self) {
        self.wanted.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether a pass is asked for or under way.
    fn pending(&self) -> bool {
        let pass = self.pass.lock();
        pass.at.is_some() || pass.done != self.wanted.load(Ordering::Acquire)
    }
}

/// Stops the sweeper when dropped: the server holds it for as long as it runs.
pub struct SweeperGuard {
    pub(super) shared: Arc<Shared>,
}

impl Drop for SweeperGuard {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.sweeper_wakeup.notify_one();
    }
}

impl Shared {
    /// Handles one batch of due deadlines, taken from the shards in turn.
    /// Returns what it did and whether more are due.
    pub(super) fn sweep_batch(&self) -> (SweepReport, bool) {
        let now = self.clock.now();
        let mut report = SweepReport::default();
        let mut due: Vec<Handle> = Vec::new();
        let start = self.sweep_cursor.fetch_add(1, Ordering::Relaxed);
        let mut more = false;
        for i in 0..SHARDS {
            let mut shard = self.records[(start + i) % SHARDS].write();
            while let Some(Reverse(next)) = shard.deadlines.peek() {
                if next.at > now {
                    break;
                }
                if due.len() == SWEEP_BATCH {
                    more = true;
                    break;
                }
                due.push(next.handle);
                shard.deadlines.pop();
            }
            if more {
                break;
            }
        }
        for handle in due {
            // A first look under the read lock; only the dead need their
            // thread's lock.
            let probe = self.with_record(handle, |record| {
                match record.death(now, &self.revocations) {
                    None => Err(record.deadlines().idle_expires_at),
                    Some(_) => Ok(record.thread_id.clone()),
                }
            });
            let outcome = match probe {
                None => Retired::Absent,
                Some(Err(next)) => Retired::StillLive(next),
                Some(Ok(thread_id)) => self.remove_from_thread(handle, &thread_id, None),
            };
            match outcome {
                Retired::StillLive(at) => {
                    report.requeued += 1;
                    self.records[handle.shard()]
                        .write()
                        .deadlines
                        .push(Reverse(Deadline { at, handle }));
                }
                Retired::RemovedDead | Retired::RevokedLive => report.removed += 1,
                Retired::Absent => {}
            }
        }
        let cutoff = now.saturating_sub(self.retention.age);
        self.tombstones.evict_older_than(cutoff);
        self.thread_tombstones.evict_older_than(cutoff);
        (report, more)
    }

    /// Reads the next batch of slots of the reclaim pass and removes the
    /// dead records among them. Returns how many it removed and whether the
    /// pass (or another one asked for since) goes on.
    pub(super) fn reclaim_batch(&self) -> (usize, bool) {
        let mut pass = self.reclaim.pass.lock();
        let wanted = self.reclaim.wanted.load(Ordering::Acquire);
        let (answers, shard_index, from) = match pass.at {
            Some(at) => at,
            None if pass.done == wanted => return (0, false),
            None => (wanted, 0, 0),
        };
        let now = self.clock.now();
        let (dead, next_at) = {
            let shard = self.records[shard_index].read();
            let to = shard.slab.slots().min(from.saturating_add(RECLAIM_BATCH));
            let dead: Vec<(Handle, Box<str>)> = (from..to)
                .filter_map(|slot| {
                    let record = shard.at(slot)?;
                    record.death(now, &self.revocations)?;
                    Some((shard.handle(shard_index, slot), record.thread_id.clone()))
                })
                .collect();
            let next_at = if to < shard.slab.slots() {
                Some((answers, shard_index, to))
            } else if shard_index + 1 < SHARDS {
                Some((answers, shard_index + 1, 0))
            } else {
                None
            };
            (dead, next_at)
        };
        let mut removed = 0;
        for (handle, thread_id) in dead {
            if let Retired::RemovedDead = self.remove_from_thread(handle, &thread_id, None) {
                removed += 1;
            }
        }
        pass.at = next_at;
        if next_at.is_none() {
            pass.done = answers;
        }
        let more = pass.at.is_some() || pass.done != self.reclaim.wanted.load(Ordering::Acquire);
        (removed, more)
    }

    /// When the sweeper next has work: the earliest queued deadline or
    /// tombstone expiry, or now while a reclaim pass is due.
    fn next_due(&self) -> Option<Millis> {
        if self.reclaim.pending() {
            return Some(0);
        }
        let deadline = self
            .records
            .iter()
            .filter_map(|shard| shard.read().deadlines.peek().map(|Reverse(d)| d.at))
            .min();
        let tombstone = self
            .tombstones
            .oldest()
            .map(|at| at.saturating_add(self.retention.age).saturating_add(1));
        match (deadline, tombstone) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The background sweeper: sweeps what is due in batches, yielding between
/// them, then sleeps until the next deadline or until Mint queues an earlier
/// one.
pub(super) async fn sweeper_task(shared: Arc<Shared>) {
    while !shared.shutdown.load(Ordering::Acquire) {
        // What falls due first, then one batch of a reclaim pass, in turn.
        loop {
            let (report, due) = shared.sweep_batch();
            if report.removed > 0 {
                tracing::debug!(
                    removed = report.removed,
                    requeued = report.requeued,
                    "swept"
                );
            }
            let (reclaimed, reclaiming) = shared.reclaim_batch();
            if reclaimed > 0 {
                tracing::debug!(reclaimed, "reclaimed revoked records");
            }
            if !(due || reclaiming) || shared.shutdown.load(Ordering::Acquire) {
                break;
            }
            tokio::task::yield_now().await;
        }
        let now = shared.clock.now();
        let sleep = shared.next_due().map_or(MAX_SWEEPER_SLEEP, |at| {
            Duration::from_millis(at.saturating_sub(now)).min(MAX_SWEEPER_SLEEP)
        });
        shared.sweeper_wakes_at.store(
            now.saturating_add(sleep.as_millis() as Millis),
            Ordering::Release,
        );
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = shared.sweeper_wakeup.notified() => {}
        }
    }
}
