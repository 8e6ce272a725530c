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

mod index;
pub mod journal;
mod owner_calls;
mod record;
mod revocation;
mod slab;
mod sweeper;
mod threads;
mod tombstones;
mod types;

use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use dashmap::DashMap;
use parking_lot::RwLock;
use tokio::sync::Notify;

use crate::clock::{Clock, Millis};
use crate::token::{CredentialId, TokenDigest};
use record::{Class, Record};
use revocation::{InstanceTaken, Revocations};
use slab::{shard_of_digest, Handle, RecordShard, SlotKey};
use sweeper::Deadline;
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
    /// When the sweeper will next wake on its own; Mint wakes it earlier only
    /// when it queues an earlier deadline.
    sweeper_wakes_at: AtomicU64,
    sweeper_wakeup: Notify,
    shutdown: AtomicBool,
}

/// The store's lifetimes in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Limits {
    idle_timeout: Millis,
    max_lifetime: Millis,
    absolute_lifetime: Option<Millis>,
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
        let millis = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as Millis;
        Store {
            shared: Arc::new(Shared {
                clock,
                limits: Limits {
                    idle_timeout: millis(config.idle_timeout),
                    max_lifetime: millis(config.max_lifetime),
                    absolute_lifetime: config.absolute_lifetime.map(millis),
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
                sweeper_wakes_at: AtomicU64::new(Millis::MAX),
                sweeper_wakeup: Notify::new(),
                shutdown: AtomicBool::new(false),
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

    /// Stores a new credential under `digest` (the digest of a freshly
    /// generated token), owned by `new.minted_by`. With `replace_previous`,
    /// the earlier live credentials of the same thread and provider instance
    /// are revoked under the thread's lock before the new record becomes
    /// visible, so the two never work at the same time and concurrent
    /// rotations of one thread serialise. A Mint for a provider instance
    /// that holds credentials of a caller outside `new.reach`, or whose
    /// replacement would revoke one, fails with [`Rejection::NotOwned`]
    /// (naming no credential of the other caller) and changes nothing.
    pub fn mint(&self, digest: TokenDigest, new: NewCredential<'_>) -> Result<Minted, Rejection> {
        let shared = &*self.shared;
        let limits = &shared.limits;
        let pair = shared
            .revocations
            .pair(new.minted_by, new.provider_instance_id, new.reach)
            .map_err(|InstanceTaken| Rejection::NotOwned {
                credential_id: None,
            })?;
        let class = shared.class(Class {
            pair,
            provider_kind: new.provider_kind.map(Box::from),
            scopes: new.scopes,
            labels: new.labels,
            idle_timeout: clamp_override(new.idle_timeout, limits.idle_timeout),
            max_lifetime: clamp_override(new.max_lifetime, limits.max_lifetime),
            absolute_lifetime: limits.absolute_lifetime.unwrap_or(Millis::MAX),
        });
        let (hash, thread_shard) = shared.thread_hash(new.thread_id);
        let mut threads = shared.threads[thread_shard].write();
        let now = shared.clock.now();
        let head = shared.find_thread(&threads, hash, new.thread_id);
        let mut older = head.map_or(SlotKey::NONE, |h| h.newest);
        let mut replaced = 0;
        if new.replace_previous && !older.is_none() {
            let previous: Vec<(Handle, Previous)> = shared
                .chain(older)
                .into_iter()
                .filter_map(|handle| {
                    let look = shared.with_record(handle, |r| {
                        if *r.class.pair.instance_id != *new.provider_instance_id {
                            Previous::Keep
                        } else if new.reach.covers(r.minted_by()) {
                            Previous::Replace
                        } else if r.death(now, &shared.revocations).is_none() {
                            Previous::InTheWay
                        } else {
                            Previous::Keep
                        }
                    });
                    look.map(|look| (handle, look))
                })
                .collect();
            // Refused before anything changed.
            if previous
                .iter()
                .any(|(_, look)| matches!(look, Previous::InTheWay))
            {
                drop(threads);
                shared.release_class(class);
                return Err(Rejection::NotOwned {
                    credential_id: None,
                });
            }
            let mut kept = Vec::new();
            // Oldest first, as RevokeThread does (see ThreadTombstones).
            for (handle, look) in previous.into_iter().rev() {
                if !matches!(look, Previous::Replace) {
                    kept.push(handle);
                    continue;
                }
                let outcome = shared.retire(handle, now, Some(RevocationCause::Replaced));
                if let Retired::RevokedLive = outcome {
                    replaced += 1;
                }
            }
            kept.reverse();
            shared.relink(&kept);
            older = kept.first().map_or(SlotKey::NONE, |h| h.key());
        }
        let minted_epoch = {
            let counting = shared.revocations.counting();
            shared.revocations.stamp(&counting, &class.pair)
        };
        let record_shard = shard_of_digest(&digest);
        let record = Record {
            digest,
            credential_id: CredentialId::generate_routed(record_shard as u8),
            thread_id: Box::from(new.thread_id),
            class,
            minted_epoch,
            created_at: now,
            last_used: AtomicU64::new(now),
            older: AtomicU32::new(older.0),
            version: 0,
        };
        let credential_id = record.credential_id;
        let deadlines = record.deadlines();
        let handle = {
            let mut shard = shared.records[record_shard].write();
            let handle = shard.insert(record_shard, record);
            shard.deadlines.push(Reverse(Deadline {
                at: deadlines.idle_expires_at,
                handle,
            }));
            handle
        };
        shared.set_head(&mut threads, hash, head.map(|h| h.newest), handle.key());
        drop(threads);
        if deadlines.idle_expires_at < shared.sweeper_wakes_at.load(Ordering::Acquire) {
            shared.sweeper_wakeup.notify_one();
        }
        Ok(Minted {
            credential_id,
            deadlines,
            replaced,
        })
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
        let Some(record) = shard.digest_slot(digest).and_then(|slot| shard.at(slot)) else {
            drop(shard);
            return Err(shared.rejection(digest));
        };
        let deadlines = record.use_at(now, required_scope, &shared.revocations)?;
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
    pub fn revoke_all(&self, target: RevokeAllTarget<'_>) -> u64 {
        let shared = &*self.shared;
        shared.revocations.revoke(target, shared.clock.now())
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
                return total;
            }
        }
    }

    /// The store's clock reading, so limits kept beside the store (a
    /// caller's Mint rate) count time as its deadlines do.
    pub fn now(&self) -> Millis {
        self.shared.clock.now()
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

/// What Mint's replacement does with one earlier credential of the thread.
enum Previous {
    /// Same provider instance, within reach: revoked (or removed if dead).
    Replace,
    /// Another instance, or dead and out of reach: left alone.
    Keep,
    /// Same instance, live, minted by another caller (an administrator,
    /// whose credentials do not take the instance from its adapter): the
    /// Mint is refused.
    InTheWay,
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
    fn retire(&self, handle: Handle, now: Millis, revoke: Option<RevocationCause>) -> Retired {
        let counting = self.revocations.counting();
        let mut shard = self.records[handle.shard()].write();
        let Some(record) = shard.get(handle) else {
            return Retired::Absent;
        };
        let (reason, was_live) = match (record.death(now, &self.revocations), revoke) {
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
            self.release(removed);
        }
        if was_live {
            Retired::RevokedLive
        } else {
            Retired::RemovedDead
        }
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
