//! Threads: each thread's credentials form a list through the records
//! (newest first), headed by an entry in a thread shard.
//!
//! Every insertion and removal of a record happens under its thread shard's
//! lock, taken before any record shard lock, and never with two record
//! shard locks held: that order is what keeps the lists and the shards in
//! step without deadlock.

use std::hash::BuildHasher as _;
use std::sync::atomic::Ordering;

use hashbrown::HashTable;

use super::slab::{Handle, SlotKey};
use super::types::RevocationCause;
use super::{Retired, Shared, SHARDS};

/// One shard of thread heads.
#[derive(Default)]
pub(super) struct ThreadShard {
    pub(super) heads: HashTable<ThreadHead>,
}

/// A thread's entry: 32 bits of the hash of its id and its newest
/// credential. The id itself is read from that credential's record.
#[derive(Debug, Clone, Copy)]
pub(super) struct ThreadHead {
    pub(super) tag: u32,
    pub(super) newest: SlotKey,
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

    /// A thread's credentials from `newest` on, newest first. The caller
    /// holds the thread's shard lock, so the list does not change meanwhile.
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

    /// Links `kept` (newest first) into one list. The caller holds the
    /// thread's shard lock.
    pub(super) fn relink(&self, kept: &[Handle]) {
        for (i, &handle) in kept.iter().enumerate() {
            let older = kept.get(i + 1).map_or(SlotKey::NONE, |h| h.key());
            self.with_record(handle, |r| r.older.store(older.0, Ordering::Release));
        }
    }

    /// Takes the record `handle` names out of its thread's list and its
    /// shard if it is dead, or if `revoke` is given; `thread_id` is the
    /// record's thread as read before the thread lock was taken.
    pub(super) fn remove_from_thread(
        &self,
        handle: Handle,
        thread_id: &str,
        revoke: Option<RevocationCause>,
    ) -> Retired {
        let (hash, thread_shard) = self.thread_hash(thread_id);
        let mut threads = self.threads[thread_shard].write();
        let Some(head) = self.find_thread(&threads, hash, thread_id) else {
            return Retired::Absent;
        };
        let chain = self.chain(head.newest);
        let Some(position) = chain.iter().position(|&h| h == handle) else {
            return Retired::Absent;
        };
        let outcome = self.retire(handle, self.clock.now(), revoke);
        if let Retired::RevokedLive | Retired::RemovedDead = outcome {
            // Only the link that pointed at the removed record changes.
            let older = chain.get(position + 1).map_or(SlotKey::NONE, |h| h.key());
            match position.checked_sub(1) {
                None => self.set_head(&mut threads, hash, Some(head.newest), older),
                Some(newer) => {
                    self.with_record(chain[newer], |r| r.older.store(older.0, Ordering::Release));
                }
            }
        }
        outcome
    }

    /// Makes `newest` the head of the thread whose head was `previous`
    /// (`None`: the thread had no entry); [`SlotKey::NONE`] drops the entry.
    pub(super) fn set_head(
        &self,
        threads: &mut ThreadShard,
        hash: u64,
        previous: Option<SlotKey>,
        newest: SlotKey,
    ) {
        let entry = previous.and_then(|previous| {
            threads
                .heads
                .find_entry(hash, |h| h.newest == previous)
                .ok()
        });
        match (entry, newest.is_none()) {
            (Some(entry), true) => {
                entry.remove();
            }
            (Some(mut entry), false) => entry.get_mut().newest = newest,
            (None, true) => {}
            (None, false) => {
                threads.heads.insert_unique(
                    hash,
                    ThreadHead {
                        tag: thread_tag(hash),
                        newest,
                    },
                    |head| self.rehash_thread(head),
                );
            }
        }
    }
}
