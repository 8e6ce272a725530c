//! Threads: each thread's credentials form a doubly linked list through the
//! records (newest first), headed by an entry in a thread shard that also
//! counts them.
//!
//! Every insertion and removal of a record happens under its thread shard's
//! lock, taken before any record shard lock, and never with two record
//! shard locks held: that order is what keeps the lists and the shards in
//! step without deadlock. Because the list is doubly linked, a record
//! leaves it in constant time (RevokeCredential, the sweeper), however many
//! credentials the thread holds; only the calls about a whole thread
//! (RevokeThread, Touch by thread, a Mint's replacement) walk it, and the
//! per-thread limit bounds that walk.

use std::hash::BuildHasher as _;
use std::sync::atomic::Ordering;

use hashbrown::HashTable;

use super::slab::{Handle, SlotKey};
use super::types::{DeathReason, RevocationCause};
use super::{Accounting, Retired, Shared, SHARDS};
use crate::clock::Millis;

/// One shard of thread heads.
#[derive(Default)]
pub(super) struct ThreadShard {
    pub(super) heads: HashTable<ThreadHead>,
}

/// A thread's entry: 32 bits of the hash of its id, its newest credential
/// and how many records its list holds. The id itself is read from that
/// credential's record.
#[derive(Debug, Clone, Copy)]
pub(super) struct ThreadHead {
    pub(super) tag: u32,
    pub(super) newest: SlotKey,
    /// Records in the list, live or dead but not yet removed: what the
    /// per-thread limit compares first (see [`Shared::mint`]).
    pub(super) held: u32,
}

/// A thread as the calls that hold its shard's lock name it: its id and
/// the id's keyed hash.
#[derive(Debug, Clone, Copy)]
pub(super) struct ThreadKey<'a> {
    pub(super) id: &'a str,
    pub(super) hash: u64,
}

/// How [`Shared::detach_as`] removes a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Removal {
    /// As [`Shared::retire`] does: if dead or revoked, with a tombstone.
    Retire,
    /// Removed for this reason, as the journal recorded it (replay).
    As(DeathReason),
    /// A pending record whose Mint failed: gone without a trace.
    Discard,
}

/// The part of a thread-id hash a [`ThreadHead`] keeps.
pub(super) fn thread_tag(hash: u64) -> u32 {
    (hash >> 32) as u32
}

impl Shared {
    /// The keyed hash of a thread id and its thread shard. The shard comes
    /// from bits the shard's own table does not use (it takes the low bits
    /// for the bucket and the top seven for the tag).
    pub(super) fn thread_hash(&self, thread_id: &str) -> (u64, usize) {
        let hash = self.thread_hasher.hash_one(thread_id);
        (hash, (hash >> 40) as usize % SHARDS)
    }

    /// The head of a thread's list, if the thread has credentials.
    pub(super) fn find_thread(
        &self,
        threads: &ThreadShard,
        hash: u64,
        thread_id: &str,
    ) -> Option<ThreadHead> {
        threads
            .heads
            .find(hash, |head| {
                head.tag == thread_tag(hash)
                    && self
                        .with_key(head.newest, |r| *r.thread_id == *thread_id)
                        .unwrap_or(false)
            })
            .copied()
    }

    /// The hash of the thread a head belongs to, for its table to grow.
    pub(super) fn rehash_thread(&self, head: &ThreadHead) -> u64 {
        self.with_key(head.newest, |r| self.thread_hash(&r.thread_id).0)
            .unwrap_or(0)
    }

    /// Makes room in every thread shard for the threads of `credentials`
    /// records spread evenly, before replay puts them back: a thread table
    /// that doubles rehashes every thread id it holds, reading each from its
    /// record (a cache miss and a keyed hash per thread, at every step).
    /// Sized as if every credential had a thread of its own, the usual case;
    /// a shard that gets more only grows as it would have.
    pub(super) fn reserve_threads(&self, credentials: usize) {
        let mean = credentials / SHARDS;
        // Four standard deviations of the binomial spread over the shards.
        let per_shard = mean + 4 * mean.isqrt() + 16;
        for shard in self.threads.iter() {
            let mut threads = shard.write();
            let additional = per_shard.saturating_sub(threads.heads.len());
            threads
                .heads
                .reserve(additional, |head| self.rehash_thread(head));
        }
    }

    /// A thread's credentials from `newest` on, newest first. The caller
    /// holds the thread's shard lock, so the list does not change meanwhile;
    /// its length is the head's `held`, which the per-thread limit bounds.
    pub(super) fn chain(&self, newest: SlotKey) -> Vec<Handle> {
        let mut chain = Vec::new();
        let mut next = newest;
        while !next.is_none() {
            let shard = self.records[next.shard()].read();
            let Some(record) = shard.at(next.slot()) else {
                break;
            };
            chain.push(shard.handle(next.shard(), next.slot()));
            next = SlotKey(record.older.load(Ordering::Acquire));
        }
        chain
    }

    /// Makes the record at `key`, just inserted with `older` pointing at
    /// the thread's newest (`head`, `None` when the thread had no entry),
    /// the thread's newest credential. The caller holds the thread's shard
    /// lock.
    pub(super) fn link_newest(
        &self,
        threads: &mut ThreadShard,
        hash: u64,
        head: Option<ThreadHead>,
        key: SlotKey,
    ) {
        let Some(head) = head else {
            threads.heads.insert_unique(
                hash,
                ThreadHead {
                    tag: thread_tag(hash),
                    newest: key,
                    held: 1,
                },
                |head| self.rehash_thread(head),
            );
            return;
        };
        self.with_key(head.newest, |r| r.newer.store(key.0, Ordering::Release));
        if let Ok(mut entry) = threads.heads.find_entry(hash, |h| h.newest == head.newest) {
            let entry = entry.get_mut();
            entry.newest = key;
            entry.held += 1;
        }
    }

    /// Takes the record `handle` names out of its thread's list and its
    /// shard if it is dead, or if `revoke` is given (see [`Shared::retire`]),
    /// in constant time. The caller holds the thread's shard lock (`threads`);
    /// a handle of another thread, or of a record already gone, is
    /// [`Retired::Absent`].
    pub(super) fn detach(
        &self,
        threads: &mut ThreadShard,
        thread: ThreadKey<'_>,
        handle: Handle,
        now: Millis,
        revoke: Option<RevocationCause>,
        accounting: Accounting,
    ) -> Retired {
        self.detach_as(
            threads,
            thread,
            handle,
            now,
            revoke,
            accounting,
            Removal::Retire,
        )
    }

    /// [`Shared::detach`], removing the record as `removal` says.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn detach_as(
        &self,
        threads: &mut ThreadShard,
        thread: ThreadKey<'_>,
        handle: Handle,
        now: Millis,
        revoke: Option<RevocationCause>,
        accounting: Accounting,
        removal: Removal,
    ) -> Retired {
        let ThreadKey {
            id: thread_id,
            hash,
        } = thread;
        let Some(head) = self.find_thread(threads, hash, thread_id) else {
            return Retired::Absent;
        };
        let links = self.with_record(handle, |r| {
            (*r.thread_id == *thread_id).then(|| {
                (
                    SlotKey(r.older.load(Ordering::Acquire)),
                    SlotKey(r.newer.load(Ordering::Acquire)),
                )
            })
        });
        let Some(Some((older, newer))) = links else {
            return Retired::Absent;
        };
        let outcome = match removal {
            Removal::Retire => self.retire(handle, now, revoke, accounting),
            Removal::As(reason) => self.retire_as(handle, now, revoke, accounting, Some(reason)),
            Removal::Discard => {
                if self.discard(handle) {
                    Retired::RemovedDead
                } else {
                    Retired::Absent
                }
            }
        };
        if let Retired::RevokedLive | Retired::RemovedDead = outcome {
            self.unlink(threads, hash, head.newest, handle.key(), older, newer);
        }
        outcome
    }

    /// Joins the neighbours of a removed record (`key`, whose links were
    /// `older` and `newer`) and takes it out of its head (whose newest is
    /// `head_newest`), dropping the head with the thread's last record.
    fn unlink(
        &self,
        threads: &mut ThreadShard,
        hash: u64,
        head_newest: SlotKey,
        key: SlotKey,
        older: SlotKey,
        newer: SlotKey,
    ) {
        if !newer.is_none() {
            self.with_key(newer, |r| r.older.store(older.0, Ordering::Release));
        }
        if !older.is_none() {
            self.with_key(older, |r| r.newer.store(newer.0, Ordering::Release));
        }
        let Ok(mut entry) = threads.heads.find_entry(hash, |h| h.newest == head_newest) else {
            debug_assert!(false, "a thread's record without its head");
            return;
        };
        let head = entry.get_mut();
        head.held = head.held.saturating_sub(1);
        if head_newest == key {
            head.newest = older;
            if older.is_none() {
                entry.remove();
            }
        }
    }

    /// Takes the record `handle` names out of its thread's list and its
    /// shard if it is dead, or if `revoke` is given; `thread_id` is the
    /// record's thread as read before the thread lock was taken. Constant
    /// time, whatever the thread holds.
    pub(super) fn remove_from_thread(
        &self,
        handle: Handle,
        thread_id: &str,
        revoke: Option<RevocationCause>,
    ) -> Retired {
        let now = self.clock.now();
        let seen = self.durable.as_ref().and_then(|_| {
            self.with_record(handle, |r| {
                (r.credential_id, r.death(now, &self.revocations))
            })
        });
        let outcome = self.remove_from_thread_at(handle, thread_id, revoke, now, Removal::Retire);
        if let (Some(durable), Some((id, Some(reason))), Retired::RemovedDead) =
            (&self.durable, seen, &outcome)
        {
            // So that a restart puts back the tombstone as it was, rather
            // than one recorded when the replayed record is swept again.
            // Nobody waits: a lost record is swept again after a restart.
            let _ = durable.append_unawaited(now, |w| w.swept(&id, now, reason));
        }
        outcome
    }

    /// [`Shared::remove_from_thread`] at `now` (journal replay).
    pub(super) fn remove_from_thread_at(
        &self,
        handle: Handle,
        thread_id: &str,
        revoke: Option<RevocationCause>,
        now: Millis,
        removal: Removal,
    ) -> Retired {
        let (hash, thread_shard) = self.thread_hash(thread_id);
        let mut threads = self.threads[thread_shard].write();
        self.detach_as(
            &mut threads,
            ThreadKey {
                id: thread_id,
                hash,
            },
            handle,
            now,
            revoke,
            Accounting::GiveBack,
            removal,
        )
    }

    /// Checks every thread list against the record shards: links agree
    /// both ways, every record is in its own thread's list exactly once,
    /// and every head counts its records. For tests, on a quiet store.
    #[cfg(debug_assertions)]
    pub(super) fn check_thread_lists(&self) -> Result<u64, String> {
        use std::collections::HashSet;
        let mut seen: HashSet<u32> = HashSet::new();
        for (index, shard) in self.threads.iter().enumerate() {
            let threads = shard.read();
            for head in threads.heads.iter() {
                let thread_id = self
                    .with_key(head.newest, |r| r.thread_id.clone())
                    .ok_or_else(|| format!("thread shard {index}: head names no record"))?;
                let (hash, home) = self.thread_hash(&thread_id);
                if home != index || head.tag != thread_tag(hash) {
                    return Err(format!("thread {thread_id}: head in the wrong place"));
                }
                let (mut key, mut newer, mut count) = (head.newest, SlotKey::NONE, 0u32);
                while !key.is_none() {
                    if !seen.insert(key.0) {
                        return Err(format!("thread {thread_id}: record {key:?} listed twice"));
                    }
                    let (same, back, older) = self
                        .with_key(key, |r| {
                            (
                                *r.thread_id == *thread_id,
                                SlotKey(r.newer.load(Ordering::Acquire)),
                                SlotKey(r.older.load(Ordering::Acquire)),
                            )
                        })
                        .ok_or_else(|| format!("thread {thread_id}: link to no record"))?;
                    if !same {
                        return Err(format!("thread {thread_id}: another thread's record"));
                    }
                    if back != newer {
                        return Err(format!("thread {thread_id}: newer link {back:?} at {key:?}, expected {newer:?}"));
                    }
                    count += 1;
                    (newer, key) = (key, older);
                }
                if count != head.held {
                    return Err(format!(
                        "thread {thread_id}: head counts {}, list holds {count}",
                        head.held
                    ));
                }
            }
        }
        Ok(seen.len() as u64)
    }
}
