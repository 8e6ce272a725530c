//! Restart: the snapshot, then the journal after it, applied to an empty
//! store.
//!
//! A snapshot is written while calls go on, so it may already hold changes
//! whose records come after its boundary. Every record kind is therefore
//! applied so that applying it again is harmless (stamps are set-if-newer,
//! uses are a maximum, a revocation of what is already gone does nothing),
//! and credentials minted after the boundary are left out of the snapshot's
//! part and put back by their own Mint record, in order: a revocation after
//! the boundary then reaches exactly the credentials that existed when it
//! ran, as in memory.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use hashbrown::HashTable;

use super::super::journal::{Records, Recovered};
use super::super::owner_calls::Ended;
use super::super::record::{Class, Record};
use super::super::slab::{credential_hash, shard_of_digest, SlotKey};
use super::super::sweeper::Deadline;
use super::super::threads::{Removal, ThreadKey};
use super::super::types::{DeathReason, Reach, RevocationCause};
use super::super::{Accounting, Shared, SHARDS};
use super::event::{ClassKey, DecodeError, Event, StoredCredential, MINTED};
use crate::clock::Millis;
use crate::token::{CredentialId, TokenDigest};

/// Where a Minted record's digest sits: after the tag.
const MINTED_DIGEST: std::ops::Range<usize> = 1..33;

/// Where a Minted record's credential id sits: after the tag and digest.
const MINTED_ID: std::ops::Range<usize> = 33..49;

/// Replays `recovered` into the empty store `shared`; `newest` is the
/// newest time the store had used and `grace` the downtime forgiven (see
/// [`super::RESTART_GRACE`]). Returns how many records were read.
pub(super) fn restore(
    shared: &Shared,
    recovered: &Recovered,
    newest: Millis,
    grace: Millis,
) -> Result<u64, DecodeError> {
    let (snapshot, journal) = recovered.split();
    presize(shared, recovered.records());
    // Only the snapshot's records consult it; the journal after a snapshot
    // is bounded by compaction, a journal without one is not.
    let minted_later = if recovered.snapshot().is_some() {
        MintedIds::of(journal.clone())
    } else {
        MintedIds::default()
    };
    // The snapshot's newer last uses of credentials it leaves to their Mint.
    let mut later_uses: HashMap<CredentialId, Millis> = HashMap::new();
    let mut records = 0u64;
    // A snapshot holds each record once and nothing is replayed before it.
    let mut replay = Replay {
        shared,
        classes: ClassCache::default(),
        may_repeat: false,
    };
    for payload in snapshot {
        records += 1;
        match Event::decode(payload)? {
            Event::Minted {
                credential,
                replaced,
            } => {
                if minted_later.contains(&credential.credential_id) {
                    later_uses.insert(credential.credential_id, credential.last_used);
                } else {
                    replay.restore_minted(credential, &replaced)?;
                }
            }
            Event::Tombstone { dead, .. } if minted_later.contains(&dead.credential_id) => {}
            event => replay.apply(event)?,
        }
    }
    // A journal holds each Mint once; after a snapshot, a Mint may repeat
    // a credential the snapshot holds.
    replay.may_repeat = recovered.snapshot().is_some();
    // Clean if the last record is a clean stop's (a snapshot is written
    // while the store runs, so it says nothing either way).
    let mut clean = false;
    for payload in journal {
        records += 1;
        let event = Event::decode(payload)?;
        clean = matches!(event, Event::Closed { .. });
        replay.apply(event)?;
    }
    replay.classes.release(shared);
    for (id, last_used) in later_uses {
        shared.with_id(&id, |_, record| {
            record.last_used.fetch_max(last_used, Ordering::AcqRel)
        });
    }
    finish(shared, newest, grace, clean);
    Ok(records)
}

/// A replay in progress.
struct Replay<'s> {
    shared: &'s Shared,
    classes: ClassCache,
    /// Whether a Mint may repeat a credential already put back, and must
    /// be checked for one.
    may_repeat: bool,
}

/// The classes replay built most recently, by [`ClassKey`]: most records
/// share one of a few classes, and a hit saves decoding the class's
/// strings, interning its pair and class (three keyed hashes of its
/// strings and two map locks) and the allocations of a candidate. Holding
/// a class here keeps it interned while replay runs, so each is released
/// when it leaves the cache, as a removed record's would be.
#[derive(Default)]
struct ClassCache {
    /// (hash of the key, the key's bytes, the class); at most
    /// [`ClassCache::ENTRIES`], replaced round robin.
    entries: Vec<(u32, Box<[u8]>, Arc<Class>)>,
    next: usize,
}

impl ClassCache {
    /// Enough for the handful of classes a store usually holds; a scan of
    /// this many hashes costs less than one interning.
    const ENTRIES: usize = 32;

    /// A key's hash: the hardware CRC, a few nanoseconds for a class's
    /// hundred bytes, where a keyed hash of its strings costs ten times as
    /// much.
    fn hash(key: ClassKey<'_>) -> u32 {
        crc32c::crc32c_append(crc32c::crc32c(key.lifetimes), key.strings)
    }

    /// The class cached under `key` (whose hash is `hash`).
    fn get(&self, hash: u32, key: ClassKey<'_>) -> Option<Arc<Class>> {
        let (a, b) = (key.lifetimes, key.strings);
        self.entries
            .iter()
            .find(|(h, bytes, _)| {
                *h == hash
                    && bytes.len() == a.len() + b.len()
                    && bytes[..a.len()] == *a
                    && bytes[a.len()..] == *b
            })
            .map(|(_, _, class)| class.clone())
    }

    /// Caches `class` under `key`, releasing the class it replaces.
    fn insert(&mut self, shared: &Shared, hash: u32, key: ClassKey<'_>, class: Arc<Class>) {
        let bytes = [key.lifetimes, key.strings].concat().into_boxed_slice();
        if self.entries.len() < Self::ENTRIES {
            self.entries.push((hash, bytes, class));
            return;
        }
        let slot = self.next % Self::ENTRIES;
        self.next = self.next.wrapping_add(1);
        let (_, _, evicted) = std::mem::replace(&mut self.entries[slot], (hash, bytes, class));
        shared.release_class(evicted);
    }

    /// Lets go of every class held, releasing those no record uses.
    fn release(&mut self, shared: &Shared) {
        for (_, _, class) in self.entries.drain(..) {
            shared.release_class(class);
        }
    }
}

/// The credential ids of a run of records' Mints. Ids are random, so
/// their first word is their hash: no keyed hash per id.
#[derive(Default)]
struct MintedIds(HashTable<CredentialId>);

impl MintedIds {
    /// The ids `records` mint, read without decoding the records.
    fn of(records: Records<'_>) -> Self {
        let mut ids = HashTable::new();
        for payload in records {
            if payload.first() == Some(&MINTED) && payload.len() >= MINTED_ID.end {
                let id = CredentialId::from_bytes(payload[MINTED_ID].try_into().expect("16 bytes"));
                let hash = credential_hash(&id);
                if ids.find(hash, |other| *other == id).is_none() {
                    ids.insert_unique(hash, id, credential_hash);
                }
            }
        }
        MintedIds(ids)
    }

    /// Whether a record of the run mints `id`.
    fn contains(&self, id: &CredentialId) -> bool {
        self.0
            .find(credential_hash(id), |other| other == id)
            .is_some()
    }
}

/// Sizes the record shards and thread shards for the credentials that
/// `records` mint, before they are put back: tables grown by doubling
/// during replay reread and rehash everything they hold at every step,
/// which was a third of a restart's time at a million credentials. The
/// Mints are counted per record shard (their digest says which); some may
/// be revoked later in the journal, so this is an upper bound that a
/// compacted journal keeps close.
fn presize(shared: &Shared, records: Records<'_>) {
    let mut per_shard = [0usize; SHARDS];
    for payload in records {
        if payload.first() == Some(&MINTED) && payload.len() >= MINTED_DIGEST.end {
            let digest =
                TokenDigest::from_bytes(payload[MINTED_DIGEST].try_into().expect("32 bytes"));
            per_shard[shard_of_digest(&digest)] += 1;
        }
    }
    for (shard, records) in shared.records.iter().zip(per_shard) {
        shard.write().reserve(records);
    }
    shared.reserve_threads(per_shard.iter().sum());
}

impl Replay<'_> {
    /// Applies one record.
    fn apply(&mut self, event: Event<'_>) -> Result<(), DecodeError> {
        let shared = self.shared;
        match event {
            Event::Minted {
                credential,
                replaced,
            } => self.restore_minted(credential, &replaced)?,
            Event::Renewed { uses } => {
                for (id, last_used) in uses {
                    shared.with_id(&id, |_, record| {
                        record.last_used.fetch_max(last_used, Ordering::AcqRel)
                    });
                }
            }
            Event::CredentialRevoked {
                credential_id,
                at,
                reason,
            } => remove_by_id(
                shared,
                &credential_id,
                at,
                Some(RevocationCause::Credential),
                reason.map_or(Removal::Retire, Removal::As),
            ),
            Event::Swept {
                credential_id,
                at,
                reason,
            } => remove_by_id(shared, &credential_id, at, None, Removal::As(reason)),
            Event::ThreadRevoked {
                thread_id,
                reach,
                at,
                removed,
            } => {
                let (hash, thread_shard) = shared.thread_hash(&thread_id);
                let mut threads = shared.threads[thread_shard].write();
                let reach = reach.as_deref().map_or(Reach::All, Reach::MintedBy);
                shared.revoke_thread_locked(
                    &mut threads,
                    ThreadKey {
                        id: &thread_id,
                        hash,
                    },
                    reach,
                    at,
                    Ended::Replay(&removed),
                );
            }
            Event::ScopesStamped { stamps } => {
                for (name, epoch, at) in stamps {
                    shared
                        .revocations
                        .restore_stamps(&name, None, &[(epoch, at)]);
                }
            }
            Event::ScopeHistory {
                name,
                claims,
                history,
            } => shared
                .revocations
                .restore_stamps(&name, Some(claims), &history),
            Event::Epoch { epoch } => shared.revocations.restore_epoch(epoch),
            Event::Closed { .. } | Event::Opened { .. } => {}
            Event::Tombstone {
                digest,
                recorded_at,
                dead,
            } => shared
                .tombstones
                .record(digest, dead, recorded_at, shared.retention),
            Event::ThreadDeath {
                thread_id,
                created_at,
                recorded_at,
                dead,
            } => shared.thread_tombstones.record(
                &thread_id,
                created_at,
                || dead,
                recorded_at,
                shared.retention,
            ),
        }
        Ok(())
    }

    /// Puts back a minted credential, after revoking what its Mint replaced
    /// (at its mint time, oldest first, as the Mint did).
    fn restore_minted(
        &mut self,
        credential: StoredCredential<'_>,
        replaced: &[(CredentialId, DeathReason)],
    ) -> Result<(), DecodeError> {
        let shared = self.shared;
        let record_shard = shard_of_digest(&credential.digest);
        if usize::from(credential.credential_id.route()) % SHARDS != record_shard {
            return Err(DecodeError::new("credential id routes to another shard"));
        }
        let (hash, thread_shard) = shared.thread_hash(credential.thread_id);
        let mut threads = shared.threads[thread_shard].write();
        let thread = ThreadKey {
            id: credential.thread_id,
            hash,
        };
        for (id, reason) in replaced {
            let handle = shared.with_id(id, |handle, record| {
                (*record.thread_id == *credential.thread_id).then_some(handle)
            });
            if let Some(Some(handle)) = handle {
                shared.detach_as(
                    &mut threads,
                    thread,
                    handle,
                    credential.created_at,
                    Some(RevocationCause::Replaced),
                    Accounting::GiveBack,
                    Removal::As(*reason),
                );
            }
        }
        if self.may_repeat
            && (shared
                .with_id(&credential.credential_id, |_, _| ())
                .is_some()
                || shared.tombstones.get(&credential.digest).is_some())
        {
            // Already there: a record the snapshot held as well.
            return Ok(());
        }
        let key_hash = ClassCache::hash(credential.class_key);
        let class = match self.classes.get(key_hash, credential.class_key) {
            Some(class) => class,
            None => {
                let class = intern_class(shared, &credential);
                self.classes
                    .insert(shared, key_hash, credential.class_key, class.clone());
                class
            }
        };
        let head = shared.find_thread(&threads, hash, credential.thread_id);
        let record = Record {
            digest: credential.digest,
            last_used: AtomicU64::new(credential.last_used),
            class,
            minted_epoch: credential.minted_epoch,
            created_at: credential.created_at,
            credential_id: credential.credential_id,
            thread_id: credential.thread_id.into(),
            older: AtomicU32::new(head.map_or(SlotKey::NONE, |h| h.newest).0),
            newer: AtomicU32::new(SlotKey::NONE.0),
            version: 0,
            pending: AtomicBool::new(false),
        };
        let budget = record.budget_bytes();
        let deadline = record.deadlines().idle_expires_at;
        let handle = {
            let mut shard = shared.records[record_shard].write();
            let handle = shard.insert(record_shard, record);
            shard.deadlines.push(Reverse(Deadline {
                at: deadline,
                handle,
            }));
            handle
        };
        shared.link_newest(&mut threads, hash, head, handle.key());
        shared.held.credentials.fetch_add(1, Ordering::AcqRel);
        shared.held.bytes.fetch_add(budget, Ordering::AcqRel);
        Ok(())
    }
}

/// Removes the credential `id` from its thread at the journaled time `at`,
/// if it is still held: a RevokeCredential's or a sweep's record.
fn remove_by_id(
    shared: &Shared,
    id: &CredentialId,
    at: Millis,
    revoke: Option<RevocationCause>,
    removal: Removal,
) {
    let found = shared.with_id(id, |handle, record| (handle, record.thread_id.clone()));
    if let Some((handle, thread_id)) = found {
        shared.remove_from_thread_at(handle, &thread_id, revoke, at, removal);
    }
}

/// The interned class of `credential`.
fn intern_class(shared: &Shared, credential: &StoredCredential<'_>) -> Arc<Class> {
    let pair = shared.revocations.restored_pair(
        credential.minted_by,
        credential.instance_id,
        credential.claims,
    );
    let scopes: Arc<[Box<str>]> = credential.scopes.iter().map(|&s| Box::from(s)).collect();
    let labels: Arc<[(Box<str>, Box<str>)]> = credential
        .labels
        .iter()
        .map(|&(k, v)| (Box::from(k), Box::from(v)))
        .collect();
    let bytes = Class::budget_bytes(
        &pair.instance_id,
        credential.provider_kind,
        &scopes,
        &labels,
    );
    shared.class(Class {
        pair,
        provider_kind: credential.provider_kind.map(Box::from),
        scopes,
        labels,
        idle_timeout: credential.idle_timeout,
        max_lifetime: credential.max_lifetime,
        absolute_lifetime: credential.absolute_lifetime,
        bytes,
    })
}

/// After replay: the live counts from the records, the crash bound, the
/// downtime grace, and a sweep requested for what died meanwhile.
///
/// After a crash, a use made since the last checkpoint may be missing, and
/// nothing tells which credentials were used then. So every credential
/// live at the newest recorded time counts as used then: its deadlines are
/// never earlier than one checkpoint interval before what they were (the
/// checkpointer records the time every interval), at the price of up to
/// one more idle timeout for a credential nobody was using. After a clean
/// stop every use is in the journal and nothing moves.
fn finish(shared: &Shared, newest: Millis, grace: Millis, clean: bool) {
    let revocations = &shared.revocations;
    let shards: Vec<_> = shared.records.iter().map(|s| s.read()).collect();
    revocations.recount(
        shards
            .iter()
            .flat_map(|shard| shard.records())
            .filter(|record| record.counted(revocations))
            .map(|record| (&*record.class.pair, record.minted_epoch)),
    );
    // What the crash bound and the grace move is a use like any other: the
    // next checkpoint writes it, so a later restart keeps it.
    if !clean && newest > 0 {
        for shard in &shards {
            for (slot, record) in shard.records_with_slots() {
                if record.death(newest, revocations).is_none()
                    && record.last_used.fetch_max(newest, Ordering::AcqRel) < newest
                {
                    shard.used.mark(slot);
                }
            }
        }
    }
    if grace > 0 {
        // Only what was live when the store stopped and died while it was
        // down: every other deadline stays exactly as it was.
        let now = shared.clock.now();
        for shard in &shards {
            for (slot, record) in shard.records_with_slots() {
                if record.death(newest, revocations).is_none()
                    && record.death(now, revocations).is_some()
                {
                    let last_used = record.last_used.load(Ordering::Acquire);
                    let moved = last_used.saturating_add(grace).min(now);
                    record.last_used.fetch_max(moved, Ordering::AcqRel);
                    shard.used.mark(slot);
                }
            }
        }
    }
    drop(shards);
    // Tombstones past their retention, as the sweeper would forget them:
    // replay recorded each at its death, never their forgetting.
    let cutoff = shared.clock.now().saturating_sub(shared.retention.age);
    shared.tombstones.evict_older_than(cutoff);
    shared.thread_tombstones.evict_older_than(cutoff);
    shared.reclaim.request();
    shared.sweeper_wakeup.notify_one();
}
