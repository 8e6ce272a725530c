//! Where records live: per-shard slabs of fixed chunks, and the handles
//! that name a slot.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::durable::UsedSlots;
use super::index::SlotIndex;
use super::record::Record;
use super::sweeper::Deadline;
use super::SHARDS;
use crate::token::{leading_word, CredentialId, TokenDigest};

/// Where a record lives: its shard, its slot and the slot's version, packed
/// in 64 bits. The version changes when the slot is freed, so a handle left
/// in a deadline queue never reaches the slot's next occupant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Handle(u64);

impl Handle {
    /// Slots per shard that a handle can address.
    pub(super) const MAX_SLOTS: usize = (1 << 24) - 1;

    pub(super) fn new(shard: usize, slot: u32, version: u32) -> Self {
        Handle(((shard as u64) << 56) | (u64::from(slot) << 32) | u64::from(version))
    }

    pub(super) fn shard(self) -> usize {
        (self.0 >> 56) as usize
    }

    pub(super) fn slot(self) -> u32 {
        ((self.0 >> 32) & 0x00FF_FFFF) as u32
    }

    pub(super) fn version(self) -> u32 {
        self.0 as u32
    }

    /// The shard and slot without the version.
    pub(super) fn key(self) -> SlotKey {
        SlotKey(((self.shard() as u32) << 24) | self.slot())
    }
}

/// A shard and slot without the slot's version: what a thread's list holds.
/// Under the thread's shard lock the list is exact (every record's removal
/// takes it), so no version is needed, and a link costs 4 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SlotKey(pub(super) u32);

impl SlotKey {
    /// The end of a list: shard 255, slot 2^24 - 1, which never exist
    /// ([`SHARDS`] is 64 and [`Handle::MAX_SLOTS`] stops one short).
    pub(super) const NONE: SlotKey = SlotKey(u32::MAX);

    pub(super) fn shard(self) -> usize {
        (self.0 >> 24) as usize
    }

    pub(super) fn slot(self) -> u32 {
        self.0 & 0x00FF_FFFF
    }

    pub(super) fn is_none(self) -> bool {
        self == SlotKey::NONE
    }
}

/// The record shard of a digest: a byte the in-shard hash does not use.
pub(super) fn shard_of_digest(digest: &TokenDigest) -> usize {
    usize::from(digest.as_bytes()[8]) % SHARDS
}

/// The in-shard hash of a digest (uniform already): its first 8 bytes.
pub(super) fn digest_hash(digest: &TokenDigest) -> u64 {
    leading_word(digest.as_bytes())
}

/// The in-shard hash of a credential id (random bytes already): its first
/// 8 bytes.
pub(super) fn credential_hash(id: &CredentialId) -> u64 {
    leading_word(id.as_bytes())
}

/// Records per slab chunk (104 KiB). A chunk's buffer is reserved whole and
/// filled in place, never moved or freed, so the slab grows without copying
/// and without leaving the freed halves of doubled buffers behind as
/// resident garbage; pages not yet filled are not resident.
pub(super) const CHUNK: usize = 1024;

/// The records of one shard, densely, by slot number.
#[derive(Default)]
pub(super) struct Slab {
    /// The records in chunks of [`CHUNK`] slots, filled in order; `None`
    /// marks a free slot.
    chunks: Vec<Vec<Option<Record>>>,
    /// Slots handed out so far (in use or free).
    allocated: u32,
    /// Free slots with the version their next record gets, reused before
    /// the slab grows. (A slot in use keeps its version in its record.)
    free: Vec<(u32, u32)>,
}

impl Slab {
    /// The record in `slot`, if the slot is in use.
    pub(super) fn at(&self, slot: u32) -> Option<&Record> {
        let slot = slot as usize;
        self.chunks.get(slot / CHUNK)?.get(slot % CHUNK)?.as_ref()
    }

    /// Stores `record` in a free or new slot; returns the slot.
    pub(super) fn insert(&mut self, mut record: Record) -> u32 {
        let (slot, version) = match self.free.pop() {
            Some(free) => free,
            None => {
                let slot = self.allocated as usize;
                assert!(
                    slot < Handle::MAX_SLOTS,
                    "more than 2^24 credentials in one store shard"
                );
                if slot.is_multiple_of(CHUNK) {
                    self.chunks.push(Vec::with_capacity(CHUNK));
                }
                self.allocated += 1;
                (slot as u32, 1)
            }
        };
        record.version = version;
        let chunk = &mut self.chunks[slot as usize / CHUNK];
        match chunk.get_mut(slot as usize % CHUNK) {
            Some(free) => *free = Some(record),
            None => chunk.push(Some(record)),
        }
        slot
    }

    /// Takes the record out of `slot` and frees the slot.
    pub(super) fn take(&mut self, slot: u32) -> Option<Record> {
        let record = self.chunks[slot as usize / CHUNK][slot as usize % CHUNK].take()?;
        self.free
            .push((slot, record.version.checked_add(1).unwrap_or(1)));
        Some(record)
    }

    pub(super) fn len(&self) -> usize {
        self.allocated as usize - self.free.len()
    }

    /// Slots handed out so far: every slot number in use is below it.
    pub(super) fn slots(&self) -> u32 {
        self.allocated
    }

    /// Every record held, in slot order.
    pub(super) fn records(&self) -> impl Iterator<Item = &Record> {
        self.chunks.iter().flatten().flatten()
    }
}

/// One shard of records: a slab and its indexes and deadline queue.
#[derive(Default)]
pub(super) struct RecordShard {
    pub(super) slab: Slab,
    /// Slot numbers by digest; the digest itself is in the record.
    pub(super) by_digest: SlotIndex,
    /// Slot numbers by credential id; the id itself is in the record.
    pub(super) by_credential: SlotIndex,
    /// Min-heap of (deadline, handle); entries may be stale (see module docs).
    pub(super) deadlines: BinaryHeap<Reverse<Deadline>>,
    /// The slots used since the last renewal checkpoint (durable stores).
    pub(super) used: UsedSlots,
}

impl RecordShard {
    /// The record in `slot`, if the slot is in use.
    pub(super) fn at(&self, slot: u32) -> Option<&Record> {
        self.slab.at(slot)
    }

    /// The slot of the record under `digest`.
    pub(super) fn digest_slot(&self, digest: &TokenDigest) -> Option<u32> {
        self.by_digest.find(digest_hash(digest), |slot| {
            self.at(slot).is_some_and(|record| record.digest == *digest)
        })
    }

    /// The slot of the record with credential id `id`.
    pub(super) fn credential_slot(&self, id: &CredentialId) -> Option<u32> {
        self.by_credential.find(credential_hash(id), |slot| {
            self.at(slot)
                .is_some_and(|record| record.credential_id == *id)
        })
    }

    /// The handle of an occupied slot of shard number `shard`.
    pub(super) fn handle(&self, shard: usize, slot: u32) -> Handle {
        Handle::new(shard, slot, self.at(slot).map_or(0, |r| r.version))
    }

    /// The record `handle` names, if it is still there.
    pub(super) fn get(&self, handle: Handle) -> Option<&Record> {
        self.at(handle.slot())
            .filter(|record| record.version == handle.version())
    }

    pub(super) fn insert(&mut self, shard: usize, record: Record) -> Handle {
        let (digest, credential) = (
            digest_hash(&record.digest),
            credential_hash(&record.credential_id),
        );
        let slot = self.slab.insert(record);
        self.used.cover(self.slab.slots());
        let slab = &self.slab;
        self.by_digest.insert(digest, slot, |s| {
            slab.at(s).map_or(0, |r| digest_hash(&r.digest))
        });
        self.by_credential.insert(credential, slot, |s| {
            slab.at(s).map_or(0, |r| credential_hash(&r.credential_id))
        });
        self.handle(shard, slot)
    }

    /// Makes room for `records` in all, so that filling the shard (journal
    /// replay) never regrows its indexes: each doubling rereads every
    /// record indexed so far.
    pub(super) fn reserve(&mut self, records: usize) {
        let slab = &self.slab;
        self.by_digest.reserve(records, |s| {
            slab.at(s).map_or(0, |r| digest_hash(&r.digest))
        });
        self.by_credential.reserve(records, |s| {
            slab.at(s).map_or(0, |r| credential_hash(&r.credential_id))
        });
        let chunks = records.div_ceil(CHUNK);
        self.slab
            .chunks
            .reserve(chunks.saturating_sub(self.slab.chunks.len()));
        self.deadlines
            .reserve(records.saturating_sub(self.deadlines.len()));
    }

    /// Takes the record `handle` names out of the shard and frees its slot.
    pub(super) fn remove(&mut self, handle: Handle) -> Option<Record> {
        self.get(handle)?;
        let slot = handle.slot();
        let record = self.slab.take(slot)?;
        let slab = &self.slab;
        self.by_digest
            .remove(digest_hash(&record.digest), slot, |s| {
                slab.at(s).map_or(0, |r| digest_hash(&r.digest))
            });
        self.by_credential
            .remove(credential_hash(&record.credential_id), slot, |s| {
                slab.at(s).map_or(0, |r| credential_hash(&r.credential_id))
            });
        Some(record)
    }

    pub(super) fn len(&self) -> usize {
        self.slab.len()
    }

    /// Every record held, in slot order.
    pub(super) fn records(&self) -> impl Iterator<Item = &Record> {
        self.slab.records()
    }

    /// Every record held with its slot, in slot order.
    pub(super) fn records_with_slots(&self) -> impl Iterator<Item = (u32, &Record)> {
        (0..self.slab.slots()).filter_map(|slot| Some((slot, self.at(slot)?)))
    }
}
