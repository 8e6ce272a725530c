//! Dead credentials remembered for a while, so failures stay precise: by
//! digest (what Resolve presents), by credential id (what the owner's calls
//! name) and by thread (what Touch by thread names). Bounded by age and
//! count.

use std::collections::VecDeque;
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use nohash_hasher::BuildNoHashHasher;
use parking_lot::Mutex;

use super::types::{DeadCredential, Reach};
use crate::clock::Millis;
use crate::token::{CredentialId, TokenDigest};

/// A map keyed by token digest. Digests are uniform already, so the map uses
/// their first 8 bytes as the hash instead of SipHash (see [`TokenDigest`]).
type DigestMap<V> = DashMap<TokenDigest, V, BuildNoHashHasher<u64>>;

/// How long and how many dead credentials are remembered.
#[derive(Debug, Clone, Copy)]
pub(super) struct Retention {
    /// Milliseconds a tombstone is kept.
    pub(super) age: Millis,
    /// Tombstones kept at most (0 keeps none).
    pub(super) capacity: usize,
}

/// Dead credentials by digest, with their ids indexed.
#[derive(Default)]
pub(super) struct Tombstones {
    by_digest: DigestMap<DeadCredential>,
    /// Credential id -> digest of the credentials that have a tombstone, so
    /// the owner's calls by id report a dead credential's reason. Entries go
    /// with their tombstone.
    by_id: DashMap<CredentialId, TokenDigest>,
    /// Insertion order, for eviction by age and count. Each digest appears
    /// once: a digest is only queued when it was newly inserted above.
    order: Mutex<VecDeque<(Millis, TokenDigest)>>,
}

impl Tombstones {
    /// Remembers a death. The first recorded reason wins: it is when the
    /// credential actually died. Tombstones pushed out by the count limit
    /// take their id-index entries with them.
    pub(super) fn record(
        &self,
        digest: TokenDigest,
        dead: DeadCredential,
        now: Millis,
        retention: Retention,
    ) {
        if retention.capacity == 0 {
            return;
        }
        let credential_id = dead.credential_id;
        match self.by_digest.entry(digest) {
            Entry::Occupied(_) => return,
            Entry::Vacant(vacant) => {
                vacant.insert(dead);
            }
        }
        self.by_id.insert(credential_id, digest);
        let mut order = self.order.lock();
        order.push_back((now, digest));
        while order.len() > retention.capacity {
            if let Some((_, oldest)) = order.pop_front() {
                self.forget(&oldest);
            }
        }
    }

    /// Forgets tombstones recorded at or before `cutoff`.
    pub(super) fn evict_older_than(&self, cutoff: Millis) {
        let mut order = self.order.lock();
        while let Some(&(at, digest)) = order.front() {
            if at > cutoff {
                return;
            }
            order.pop_front();
            self.forget(&digest);
        }
    }

    fn forget(&self, digest: &TokenDigest) {
        if let Some((_, tombstone)) = self.by_digest.remove(digest) {
            self.by_id.remove(&tombstone.credential_id);
        }
    }

    /// The death of the credential under `digest`, if remembered.
    pub(super) fn get(&self, digest: &TokenDigest) -> Option<DeadCredential> {
        self.by_digest.get(digest).map(|dead| dead.clone())
    }

    /// The death of the credential `id`, if remembered.
    pub(super) fn get_by_id(&self, id: &CredentialId) -> Option<DeadCredential> {
        let digest = *self.by_id.get(id)?;
        self.get(&digest)
    }

    /// When the oldest tombstone was recorded.
    /// Every tombstone with when it was recorded, oldest first: what a
    /// snapshot holds, in the order that replays the same evictions.
    pub(super) fn snapshot(&self) -> Vec<(TokenDigest, Millis, DeadCredential)> {
        let order: Vec<(Millis, TokenDigest)> = self.order.lock().iter().copied().collect();
        order
            .into_iter()
            .filter_map(|(at, digest)| Some((digest, at, self.get(&digest)?)))
            .collect()
    }

    pub(super) fn oldest(&self) -> Option<Millis> {
        self.order.lock().front().map(|&(at, _)| at)
    }

    /// How many tombstones are held.
    pub(super) fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// How many credential ids are indexed.
    pub(super) fn ids(&self) -> usize {
        self.by_id.len()
    }
}

/// The newest dead credential of each owner of each thread whose
/// credentials died, so Touch by thread gives the reason Resolve gives for
/// the thread's newest token after its records are gone, to each caller for
/// its own credentials (another caller's later death must not hide it).
#[derive(Default)]
pub(super) struct ThreadTombstones {
    /// By thread (keyed with DashMap's default random seed: thread ids come
    /// from callers), one entry per owner: a thread has a caller or two.
    by_thread: DashMap<Box<str>, Vec<ThreadDeath>>,
    /// (recorded at, thread, owner) in recording order. An entry recorded
    /// again leaves its older one behind, recognised as stale by its time;
    /// the queue is bounded at twice the capacity all the same.
    order: Mutex<VecDeque<Recorded>>,
}

/// A queued thread-tombstone entry: when it was recorded, its thread and
/// its owner.
type Recorded = (Millis, Box<str>, Arc<str>);

/// An owner's newest dead credential of a thread.
#[derive(Debug, Clone)]
pub(super) struct ThreadDeath {
    /// When that credential was minted: a newer death replaces it.
    pub(super) created_at: Millis,
    /// When this entry was recorded, for eviction.
    pub(super) recorded_at: Millis,
    /// The credential (its `minted_by` is the owner).
    pub(super) dead: DeadCredential,
}

impl ThreadTombstones {
    /// Remembers that a credential of `thread_id` minted at `created_at`
    /// died, unless a newer one of the same thread and owner is remembered
    /// already. Of two minted in the same millisecond the later death wins,
    /// so callers retire a thread's records oldest first. The caller holds
    /// the thread's shard lock, so one thread's records never race here.
    pub(super) fn record(
        &self,
        thread_id: &str,
        created_at: Millis,
        dead: impl FnOnce() -> DeadCredential,
        now: Millis,
        retention: Retention,
    ) {
        if retention.capacity == 0 {
            return;
        }
        let owner = {
            let mut deaths = match self.by_thread.get_mut(thread_id) {
                Some(deaths) => deaths,
                None => self.by_thread.entry(thread_id.into()).or_default(),
            };
            let dead = dead();
            let owner = dead.minted_by.clone();
            let death = ThreadDeath {
                created_at,
                recorded_at: now,
                dead,
            };
            match deaths.iter_mut().find(|d| d.dead.minted_by == owner) {
                Some(known) if known.created_at > created_at => return,
                Some(known) => *known = death,
                None => deaths.push(death),
            }
            owner
        };
        let mut order = self.order.lock();
        order.push_back((now, thread_id.into(), owner));
        while order.len() > 2 * retention.capacity || self.by_thread.len() > retention.capacity {
            let Some((at, thread, owner)) = order.pop_front() else {
                break;
            };
            self.forget_if_recorded_at(&thread, &owner, at);
        }
    }

    /// Forgets entries recorded at or before `cutoff`.
    pub(super) fn evict_older_than(&self, cutoff: Millis) {
        let mut order = self.order.lock();
        while order.front().is_some_and(|(at, _, _)| *at <= cutoff) {
            if let Some((at, thread, owner)) = order.pop_front() {
                self.forget_if_recorded_at(&thread, &owner, at);
            }
        }
    }

    /// Removes the owner's entry of the thread if the queue entry at `at`
    /// is its latest, and the thread's with its last entry.
    fn forget_if_recorded_at(&self, thread_id: &str, owner: &str, at: Millis) {
        if let Some(mut deaths) = self.by_thread.get_mut(thread_id) {
            deaths.retain(|d| !(*d.dead.minted_by == *owner && d.recorded_at <= at));
        }
        self.by_thread
            .remove_if(thread_id, |_, deaths| deaths.is_empty());
    }

    /// The newest dead credential of `thread_id` among those `reach`
    /// covers.
    /// Every thread's deaths, oldest recorded first: what a snapshot holds.
    pub(super) fn snapshot(&self) -> Vec<(Box<str>, ThreadDeath)> {
        let mut all: Vec<(Box<str>, ThreadDeath)> = self
            .by_thread
            .iter()
            .flat_map(|entry| {
                let thread = entry.key().clone();
                entry
                    .value()
                    .iter()
                    .map(move |death| (thread.clone(), death.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        all.sort_by_key(|(_, death)| death.recorded_at);
        all
    }

    pub(super) fn get(&self, thread_id: &str, reach: Reach<'_>) -> Option<ThreadDeath> {
        let deaths = self.by_thread.get(thread_id)?;
        deaths
            .iter()
            .filter(|d| reach.covers(&d.dead.minted_by))
            .max_by_key(|d| d.created_at)
            .cloned()
    }

    /// How many threads are remembered.
    pub(super) fn len(&self) -> usize {
        self.by_thread.len()
    }
}
