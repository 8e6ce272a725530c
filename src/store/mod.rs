//! The embedded in-memory credential store.
//!
//! Shaped after mini-redis's `Db`: [`Store`] is a cheap-to-clone handle over
//! `Arc<Shared>`, and a background sweeper (started by [`Store::spawn_sweeper`]
//! and stopped when its [`SweeperGuard`] drops) removes dead credentials.
//! Unlike mini-redis, no expiry index is touched on the hot path, and the
//! layout is built for Resolve at millions of credentials. One file per part:
//!
//! - [`slab`]: records live in [`SHARDS`] shards chosen by a digest byte. A
//!   shard keeps its records densely in a slab and finds them through two
//!   compact hash tables of slot numbers ([`index`]: by digest, by
//!   credential id), so a record costs its own bytes plus about ten bytes of
//!   index. Resolve takes one shard's read lock and renews the record with
//!   one atomic ([`record`]); it never takes a lock shared by all
//!   credentials. Credential ids carry their shard in their last byte, so a
//!   lookup by id goes straight to it too.
//! - [`revocation`]: RevokeAll, for everything, for one caller or for one
//!   caller's provider instance, is a stamp on a scope that Resolve checks
//!   against the record's mint epoch, so it costs no time per credential.
//! - [`threads`]: a thread's credentials form a list through the records,
//!   headed by an entry in a thread shard; locks are taken in a fixed order.
//! - [`owner_calls`]: Touch, RevokeCredential and RevokeThread, by handle or
//!   thread, within the caller's [`Reach`].
//! - [`sweeper`]: per-shard deadline queues, never touched by Resolve.
//! - [`tombstones`]: a dead credential leaves a tombstone (bounded by age
//!   and count) so that Resolve can say `TOKEN_REVOKED` or `TOKEN_EXPIRED`
//!   rather than `TOKEN_UNKNOWN`; it is written before the record goes, under
//!   the same shard lock, so a miss always finds it. Threads keep their
//!   newest death too, so Touch by thread agrees with Resolve.
//!
//! Every credential records the caller that minted it; calls carry a
//! [`Reach`] saying whose credentials they may act on. The store never sees
//! a token: it is keyed by [`TokenDigest`].

mod backend;
mod durable;
mod index;
pub mod journal;
mod mint;
mod owner_calls;
mod record;
pub mod redis;
mod revocation;
mod slab;
mod sweeper;
mod threads;
mod tombstones;
mod types;

use std::collections::hash_map::RandomState;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use dashmap::DashMap;
use parking_lot::RwLock;
use tokio::sync::Notify;

use crate::clock::{Clock, Millis};
use crate::token::{CredentialId, TokenDigest};
pub use backend::Backend;
use durable::Durability;
pub use durable::{
    restore_backup, CheckpointerGuard, DurableOptions, OpenError, Recovery, RestoreError, Restored,
    RESTART_GRACE,
};
use record::{Class, Record};
use revocation::Revocations;
use slab::{shard_of_digest, Handle, RecordShard, SlotKey};
use sweeper::Reclaim;
pub use sweeper::{SweepReport, SweeperGuard};
use threads::ThreadShard;
use tombstones::{Retention, ThreadTombstones, Tombstones};
pub use types::*;

/// Record shards and thread shards. A shard's lock word is a cache line
/// written by every reader of that shard: enough shards that two cores
/// rarely write the same one, few enough that the lock words stay cached
/// (16, 64 and 256 measured alike within noise on 2 cores). At most 256:
/// a credential id routes to its shard with one byte.
const SHARDS: usize = 64;

/// The cheap-to-clone handle to the store shared by every RPC.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

/// The state every handle shares.
struct Shared {
    clock: Arc<dyn Clock>,
    limits: Limits,
    retention: Retention,
    /// The records, by a digest byte (see [`shard_of_digest`]).
    records: Box<[CachePadded<RwLock<RecordShard>>]>,
    /// The heads of the threads' credential lists, by thread-id hash.
    threads: Box<[CachePadded<RwLock<ThreadShard>>]>,
    /// Keys the thread-id hash: thread ids come from callers.
    thread_hasher: RandomState,
    /// The RevokeAll scopes and the owners of every credential.
    revocations: Revocations,
    /// The interned classes records point to.
    classes: DashMap<Arc<Class>, ()>,
    tombstones: Tombstones,
    thread_tombstones: ThreadTombstones,
    /// Where the next sweep batch starts, so every shard gets its turn.
    sweep_cursor: AtomicUsize,
    /// What the held records cost the store's budgets.
    held: Held,
    /// Background removal of what RevokeAll killed (see [`sweeper`]).
    reclaim: Reclaim,
    /// When the sweeper will next wake on its own; Mint wakes it earlier only
    /// when it queues an earlier deadline.
    sweeper_wakes_at: AtomicU64,
    sweeper_wakeup: Notify,
    shutdown: AtomicBool,
    /// The journal, on a durable store (see [`durable`]).
    durable: Option<Durability>,
    /// A RevokeAll whose write failed ended records that the sweeper must
    /// not reclaim yet (see [`Store::reclaim_revoked`]).
    reclaim_deferred: AtomicBool,
}

/// The store's lifetimes in milliseconds, and its size limits (see
/// [`StoreConfig`]).
#[derive(Debug, Clone, Copy)]
struct Limits {
    idle_timeout: Millis,
    max_lifetime: Millis,
    absolute_lifetime: Option<Millis>,
    max_credentials_per_thread: u64,
    max_credentials: u64,
    max_credential_bytes: u64,
    touch_reply_limit: usize,
}

/// What the records held cost, against [`StoreConfig::max_credentials`] and
/// [`StoreConfig::max_credential_bytes`].
///
/// The budgets protect memory, so they count records actually held, live
/// or dead but not yet removed, not a liveness that revocation makes lazy:
/// Mint takes a record's place (see [`Shared::reserve`]) and the record
/// gives it back in [`Shared::retire`], the one place a record leaves its
/// shard, whatever removes it (the sweeper, a revocation, a replacement, a
/// Mint whose audit failed). What RevokeAll kills is reclaimed by the
/// sweeper in the background, so its place comes back within a sweep
/// rather than at the records' idle deadlines.
#[derive(Default)]
struct Held {
    credentials: CachePadded<AtomicU64>,
    bytes: CachePadded<AtomicU64>,
}

/// Whether a removal gives the record's place back to the budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accounting {
    /// It does: the usual case.
    GiveBack,
    /// A Mint's replacement: the Mint's reservation already counted the
    /// store after the removal.
    Prepaid,
}

/// What [`Shared::retire`] did with one record.
enum Retired {
    /// No such record (already removed).
    Absent,
    /// The record is live and was not asked to be revoked; it can next die at
    /// the given instant.
    StillLive(Millis),
    /// Removed a record that was live until now (a revocation).
    RevokedLive,
    /// Removed a record that was already dead.
    RemovedDead,
}

impl Store {
    /// A store with the given limits and clock. No sweeper runs until
    /// [`Store::spawn_sweeper`]; tests drive [`Store::sweep`] by hand.
    pub fn new(config: StoreConfig, clock: Arc<dyn Clock>) -> Self {
        Store::build(config, clock, None)
    }

    /// A store with the given limits, clock and journal, if any.
    fn build(config: StoreConfig, clock: Arc<dyn Clock>, durable: Option<Durability>) -> Self {
        let millis = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as Millis;
        Store {
            shared: Arc::new(Shared {
                clock,
                limits: Limits {
                    idle_timeout: millis(config.idle_timeout),
                    max_lifetime: millis(config.max_lifetime),
                    absolute_lifetime: config.absolute_lifetime.map(millis),
                    max_credentials_per_thread: config.max_credentials_per_thread,
                    max_credentials: config.max_credentials,
                    max_credential_bytes: config.max_credential_bytes,
                    touch_reply_limit: config.touch_reply_limit,
                },
                retention: Retention {
                    age: millis(config.tombstone_retention),
                    capacity: config.tombstone_capacity,
                },
                records: (0..SHARDS).map(|_| CachePadded::default()).collect(),
                threads: (0..SHARDS).map(|_| CachePadded::default()).collect(),
                thread_hasher: RandomState::new(),
                revocations: Revocations::default(),
                classes: DashMap::new(),
                tombstones: Tombstones::default(),
                thread_tombstones: ThreadTombstones::default(),
                sweep_cursor: AtomicUsize::new(0),
                held: Held::default(),
                reclaim: Reclaim::default(),
                sweeper_wakes_at: AtomicU64::new(Millis::MAX),
                sweeper_wakeup: Notify::new(),
                shutdown: AtomicBool::new(false),
                durable,
                reclaim_deferred: AtomicBool::new(false),
            }),
        }
    }

    /// Starts the background sweeper on the current tokio runtime. It runs
    /// until the returned guard is dropped.
    pub fn spawn_sweeper(&self) -> SweeperGuard {
        let shared = self.shared.clone();
        tokio::spawn(sweeper::sweeper_task(shared));
        SweeperGuard {
            shared: self.shared.clone(),
        }
    }

    /// Checks a digest and renews the credential when it is live and holds
    /// `required_scope` (if given); a refused scope leaves it unrenewed.
    /// `answer` reads the renewed credential under its shard's read lock, so
    /// keep it short (copy what the response needs).
    pub fn resolve_with<T>(
        &self,
        digest: &TokenDigest,
        required_scope: Option<&str>,
        answer: impl FnOnce(CredentialView<'_>) -> T,
    ) -> Result<T, Rejection> {
        let shared = &*self.shared;
        let now = shared.clock.now();
        let shard = shared.records[shard_of_digest(digest)].read();
        let Some((slot, record)) = shard
            .digest_slot(digest)
            .and_then(|slot| Some((slot, shard.at(slot)?)))
        else {
            drop(shard);
            return Err(shared.rejection(digest));
        };
        if !record.visible() {
            return Err(Rejection::Unknown);
        }
        let deadlines = record.use_at(now, required_scope, &shared.revocations)?;
        if shared.durable.is_some() {
            shard.used.mark(slot);
        }
        let pair = &*record.class.pair;
        Ok(answer(CredentialView {
            credential_id: record.credential_id,
            thread_id: &record.thread_id,
            provider_instance_id: &pair.instance_id,
            provider_kind: record.class.provider_kind.as_deref(),
            minted_by: &pair.owner.name,
            created_at: record.created_at,
            deadlines,
            scopes: &record.class.scopes,
            labels: &record.class.labels,
        }))
    }

    /// [`Store::resolve_with`], answering with an owned copy.
    pub fn resolve(
        &self,
        digest: &TokenDigest,
        required_scope: Option<&str>,
    ) -> Result<Resolved, Rejection> {
        #[allow(clippy::redundant_closure)] // the closure is generic over the view's lifetime
        self.resolve_with(digest, required_scope, |view| Resolved::from(view))
    }

    /// Revokes everything `target` names, in constant time; returns how many
    /// live credentials were revoked.
    ///
    /// On a durable store this waits for the journal on the calling thread,
    /// as [`Store::revoke_thread`] does.
    pub fn revoke_all(&self, target: RevokeAllTarget<'_>) -> u64 {
        let (revoked, durable) = self.begin_revoke_all(target);
        let written = durable.map_or(Ok(()), journal::Durable::wait_blocking);
        self.reclaim_revoked(revoked, written.is_ok());
        revoked
    }

    /// Has the sweeper reclaim what a RevokeAll ended, once the RevokeAll
    /// is durable. Not before: the records keep their pair, and so the
    /// pair's stamp, for a retry to journal if the write failed (a released
    /// pair would take the stamp with it).
    /// A reclaim put off by a failed write waits for the next durable
    /// RevokeAll (a retry, usually).
    pub(super) fn reclaim_revoked(&self, revoked: u64, durable: bool) {
        let shared = &*self.shared;
        if !durable {
            if revoked > 0 {
                shared.reclaim_deferred.store(true, Ordering::Release);
            }
            return;
        }
        if revoked > 0 || shared.reclaim_deferred.swap(false, Ordering::AcqRel) {
            // The records stay until reclaimed: their memory and budget
            // come back in the background (see `Reclaim`).
            shared.reclaim.request();
            shared.sweeper_wakeup.notify_one();
        }
    }

    /// [`Store::revoke_all`] in memory, and its journal record: the latest
    /// stamps of the scopes it names, appended under the lock that orders
    /// them with Mint's stamps.
    fn begin_revoke_all(&self, target: RevokeAllTarget<'_>) -> (u64, Option<journal::Durable>) {
        let shared = &*self.shared;
        let now = shared.clock.now();
        let mut durable = None;
        let revoked = shared.revocations.revoke(target, now, |stamps| {
            durable = shared.durable.as_ref().map(|journal| {
                journal.append(now, |w| {
                    w.scopes_stamped(stamps.iter().map(|s| (&s.name, s.epoch, s.at)))
                })
            });
        });
        (revoked, durable)
    }

    /// Removes what has died by now (and tombstones past their retention),
    /// all of it, in batches. The background sweeper does the same with
    /// yields between batches.
    pub fn sweep(&self) -> SweepReport {
        let mut total = SweepReport::default();
        loop {
            let (report, more) = self.shared.sweep_batch();
            total.removed += report.removed;
            total.requeued += report.requeued;
            if !more {
                break;
            }
        }
        loop {
            let (reclaimed, more) = self.shared.reclaim_batch();
            total.reclaimed += reclaimed;
            if !more {
                return total;
            }
        }
    }

    /// The store's clock reading, so limits kept beside the store (a
    /// caller's Mint rate) count time as its deadlines do.
    pub fn now(&self) -> Millis {
        self.shared.clock.now()
    }

    /// What the held records cost the budgets: (credentials, bytes).
    pub fn budget_used(&self) -> (u64, u64) {
        let held = &self.shared.held;
        (
            held.credentials.load(Ordering::Acquire),
            held.bytes.load(Ordering::Acquire),
        )
    }

    /// Checks the store's bookkeeping on a quiet store (no call running):
    /// every thread list is consistent both ways and counts its records,
    /// every record is in exactly one list, and the budgets count exactly
    /// the records held and their bytes. Debug builds only: for tests.
    #[cfg(debug_assertions)]
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let shared = &*self.shared;
        let listed = shared.check_thread_lists()?;
        let (mut records, mut bytes) = (0u64, 0u64);
        for shard in shared.records.iter() {
            let shard = shard.read();
            for record in shard.records() {
                records += 1;
                bytes += record.budget_bytes();
            }
        }
        if listed != records {
            return Err(format!("{records} records held, {listed} in thread lists"));
        }
        let (counted, counted_bytes) = self.budget_used();
        if (counted, counted_bytes) != (records, bytes) {
            return Err(format!(
                "budgets count {counted} records and {counted_bytes} bytes, \
                 {records} records of {bytes} bytes are held"
            ));
        }
        Ok(())
    }

    /// How many credential records are held, live or dead but not yet swept.
    pub fn record_count(&self) -> usize {
        self.shared.records.iter().map(|s| s.read().len()).sum()
    }

    /// How many classes (shared owner, instance, scopes, labels and
    /// lifetimes) are interned.
    pub fn interned_classes(&self) -> usize {
        self.shared.classes.len()
    }

    /// How many tombstones are held.
    pub fn tombstone_count(&self) -> usize {
        self.shared.tombstones.len()
    }

    /// How many threads remember their newest dead credential.
    pub fn thread_tombstone_count(&self) -> usize {
        self.shared.thread_tombstones.len()
    }

    /// How many credential ids are indexed (live records and tombstones).
    pub fn indexed_credential_ids(&self) -> usize {
        let live: usize = self
            .shared
            .records
            .iter()
            .map(|s| s.read().by_credential.len)
            .sum();
        live + self.shared.tombstones.ids()
    }

    /// How many sweeper deadlines are queued (some may be stale).
    pub fn queued_deadlines(&self) -> usize {
        self.shared
            .records
            .iter()
            .map(|s| s.read().deadlines.len())
            .sum()
    }
}

/// Decodes one journal record (for the fuzz target of the journal's
/// decoder: any bytes either decode or are refused, never a panic).
#[doc(hidden)]
pub fn decode_journal_record(payload: &[u8]) -> Result<String, String> {
    durable::event::Event::decode(payload)
        .map(|event| format!("{event:?}"))
        .map_err(|e| e.to_string())
}

/// The refusal for a named credential outside the call's reach.
fn not_owned(credential_id: &CredentialId) -> Rejection {
    Rejection::NotOwned {
        credential_id: Some(*credential_id),
    }
}

/// A per-credential override, never above the store's limit, and at least
/// 1 ms so that a credential is never born dead.
fn clamp_override(requested: Option<Duration>, limit: Millis) -> Millis {
    requested.map_or(limit, |d| {
        (d.as_millis().min(u128::from(limit)) as Millis).max(1)
    })
}

impl Shared {
    /// The interned copy of `candidate`, which becomes it if none exists.
    fn class(&self, candidate: Class) -> Arc<Class> {
        if let Some(interned) = self.classes.get(&candidate) {
            return interned.key().clone();
        }
        self.classes
            .entry(Arc::new(candidate))
            .or_insert(())
            .key()
            .clone()
    }

    /// Notes a use of the record `handle` names for the next renewal
    /// checkpoint (durable stores only).
    fn mark_used(&self, handle: Handle) {
        if self.durable.is_some() {
            self.records[handle.shard()].read().used.mark(handle.slot());
        }
    }

    /// Runs `read` on the record under `digest`, without using it.
    #[cfg(test)]
    fn with_digest<T>(&self, digest: &TokenDigest, read: impl FnOnce(&Record) -> T) -> Option<T> {
        let shard = self.records[shard_of_digest(digest)].read();
        let slot = shard.digest_slot(digest)?;
        shard.at(slot).map(read)
    }

    /// Runs `read` on the record `handle` names, under its shard's read lock.
    fn with_record<T>(&self, handle: Handle, read: impl FnOnce(&Record) -> T) -> Option<T> {
        let shard = self.records[handle.shard()].read();
        shard.get(handle).map(read)
    }

    /// Runs `read` on the record in the slot `key` names, under its shard's
    /// read lock.
    fn with_key<T>(&self, key: SlotKey, read: impl FnOnce(&Record) -> T) -> Option<T> {
        let shard = self.records[key.shard()].read();
        shard.at(key.slot()).map(read)
    }

    /// Runs `read` on the record with credential id `id` (and its handle),
    /// under its shard's read lock: an id names its shard in its last byte.
    fn with_id<T>(&self, id: &CredentialId, read: impl FnOnce(Handle, &Record) -> T) -> Option<T> {
        let shard_index = usize::from(id.route()) % SHARDS;
        let shard = self.records[shard_index].read();
        let slot = shard.credential_slot(id)?;
        let record = shard.at(slot)?;
        Some(read(shard.handle(shard_index, slot), record))
    }

    /// The tombstone of the credential `id` whose record is gone, refused
    /// as [`Rejection::NotOwned`] when it is outside `reach`.
    fn dead_by_id(
        &self,
        id: &CredentialId,
        reach: Reach<'_>,
    ) -> Result<Option<DeadCredential>, Rejection> {
        match self.tombstones.get_by_id(id) {
            Some(dead) if !reach.covers(&dead.minted_by) => Err(not_owned(id)),
            dead => Ok(dead),
        }
    }

    /// Why an absent digest fails: its tombstone's reason, or unknown.
    fn rejection(&self, digest: &TokenDigest) -> Rejection {
        match self.tombstones.get(digest) {
            Some(dead) => Rejection::Dead(dead),
            None => Rejection::Unknown,
        }
    }

    /// Removes the record `handle` names if it is dead, or if `revoke` is
    /// given, leaving a tombstone, and releases what it held. The caller
    /// holds the record's thread shard lock and takes the record out of the
    /// thread's list.
    ///
    /// The tombstone is written under the record's shard lock, before the
    /// record disappears, so a Resolve that misses the record always finds
    /// the tombstone. Removal and the live count change together with
    /// respect to RevokeAll, so a credential is counted by exactly one
    /// revocation.
    ///
    /// A removed record gives its place in the budgets back here, unless
    /// `accounting` says its Mint's reservation did already.
    fn retire(
        &self,
        handle: Handle,
        now: Millis,
        revoke: Option<RevocationCause>,
        accounting: Accounting,
    ) -> Retired {
        self.retire_as(handle, now, revoke, accounting, None)
    }

    /// [`Shared::retire`]; `forced` removes the record for that reason
    /// whatever its deadlines say (journal replay, see [`durable`]).
    fn retire_as(
        &self,
        handle: Handle,
        now: Millis,
        revoke: Option<RevocationCause>,
        accounting: Accounting,
        forced: Option<DeathReason>,
    ) -> Retired {
        let counting = self.revocations.counting();
        let mut shard = self.records[handle.shard()].write();
        let Some(record) = shard.get(handle) else {
            return Retired::Absent;
        };
        let (reason, was_live) = match (record.death(now, &self.revocations), revoke) {
            // Replay: the journal says why it died, whatever the replayed
            // last use (up to a checkpoint older) would say now.
            (death, _) if forced.is_some() => {
                let reason = forced.expect("checked");
                (reason, death.is_none())
            }
            (Some(reason), _) => (reason, false),
            (None, Some(cause)) => (DeathReason::Revoked(cause), true),
            (None, None) => return Retired::StillLive(record.deadlines().idle_expires_at),
        };
        let dead = record.dead(reason);
        self.thread_tombstones.record(
            &record.thread_id,
            record.created_at,
            || dead.clone(),
            now,
            self.retention,
        );
        self.tombstones
            .record(record.digest, dead, now, self.retention);
        if record.counted(&self.revocations) {
            self.revocations.uncount(&counting, &record.class.pair);
        }
        let removed = shard.remove(handle);
        drop((shard, counting));
        if let Some(removed) = removed {
            if accounting == Accounting::GiveBack {
                self.held.credentials.fetch_sub(1, Ordering::AcqRel);
                self.held
                    .bytes
                    .fetch_sub(removed.budget_bytes(), Ordering::AcqRel);
            }
            self.release(removed);
        }
        if was_live {
            Retired::RevokedLive
        } else {
            Retired::RemovedDead
        }
    }

    /// Removes the pending record `handle` names, whose Mint did not become
    /// durable, as if it had never been: no tombstone, its count and its
    /// place in the budgets given back. The caller holds its thread's shard
    /// lock and takes it out of the thread's list. Returns whether it was
    /// there.
    fn discard(&self, handle: Handle) -> bool {
        let counting = self.revocations.counting();
        let mut shard = self.records[handle.shard()].write();
        let Some(record) = shard.get(handle) else {
            return false;
        };
        if record.counted(&self.revocations) {
            self.revocations.uncount(&counting, &record.class.pair);
        }
        let removed = shard.remove(handle);
        drop((shard, counting));
        if let Some(removed) = removed {
            self.held.credentials.fetch_sub(1, Ordering::AcqRel);
            self.held
                .bytes
                .fetch_sub(removed.budget_bytes(), Ordering::AcqRel);
            self.release(removed);
        }
        true
    }

    /// Lets go of a removed record's class and pair when no other record
    /// uses them.
    fn release(&self, record: Record) {
        let class = record.class.clone();
        drop(record);
        self.release_class(class);
    }

    /// Lets go of `class`, and of it and its pair when no record uses them.
    fn release_class(&self, class: Arc<Class>) {
        // Unused classes and pairs go: when only the map (and `class` here)
        // hold one, no record refers to it, so a pair's revocations no
        // longer matter. Mint takes both from the same maps, whose shard
        // locks serialise it with these checks.
        self.classes
            .remove_if(&*class, |interned, _| Arc::strong_count(interned) == 2);
        let pair = class.pair.clone();
        drop(class);
        self.revocations.release(pair);
    }
}
