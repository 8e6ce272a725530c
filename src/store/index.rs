//! The compact hash index of a record shard.

/// An index of a record shard (by digest, by credential id): an
/// open-addressing table of slot numbers with an 8-bit tag each, probed
/// linearly. One probe usually reads
/// one cache line of the table (16 entries) and then the record, where a
/// general-purpose table reads its control bytes, then its slot, then the
/// record: at millions of credentials each of those is a cache miss, and
/// they are most of what Resolve costs.
///
/// An entry is `tag << 24 | (slot + 1)`, zero when empty; deletion shifts
/// the following entries back, so no tombstones build up.
#[derive(Default)]
pub(super) struct SlotIndex {
    entries: Vec<u32>,
    pub(super) len: usize,
}

impl SlotIndex {
    /// Entries per table at most, as a fraction of its size.
    pub(super) const MAX_LOAD_PERCENT: usize = 80;

    pub(super) fn tag(hash: u64) -> u32 {
        (hash >> 56) as u32
    }

    pub(super) fn home(&self, hash: u64) -> usize {
        hash as usize & (self.entries.len() - 1)
    }

    /// The slot for which `matches` holds among the entries with `hash`'s tag.
    pub(super) fn find(&self, hash: u64, mut matches: impl FnMut(u32) -> bool) -> Option<u32> {
        if self.entries.is_empty() {
            return None;
        }
        let mask = self.entries.len() - 1;
        let tag = Self::tag(hash);
        let mut pos = self.home(hash);
        loop {
            let entry = self.entries[pos];
            if entry == 0 {
                return None;
            }
            if entry >> 24 == tag && matches((entry & 0x00FF_FFFF) - 1) {
                return Some((entry & 0x00FF_FFFF) - 1);
            }
            pos = (pos + 1) & mask;
        }
    }

    /// Adds `slot` under `hash`; `hash_of` gives the hash of any slot
    /// already indexed (to rebuild the table when it grows).
    pub(super) fn insert(&mut self, hash: u64, slot: u32, hash_of: impl Fn(u32) -> u64) {
        if (self.len + 1) * 100 > self.entries.len() * Self::MAX_LOAD_PERCENT {
            self.resize((self.entries.len() * 2).max(16), hash_of);
        }
        self.place(hash, slot);
        self.len += 1;
    }

    /// Grows the table to hold `entries` in all without growing again:
    /// replay knows how many records a shard will get, and growing by
    /// doubling rereads every record indexed so far (a cache miss each)
    /// at every step. `hash_of` as for insert.
    pub(super) fn reserve(&mut self, entries: usize, hash_of: impl Fn(u32) -> u64) {
        let size = (entries * 100)
            .div_ceil(Self::MAX_LOAD_PERCENT)
            .max(16)
            .next_power_of_two();
        if size > self.entries.len() {
            self.resize(size, hash_of);
        }
    }

    /// Rebuilds the table at `size` entries (a power of two).
    fn resize(&mut self, size: usize, hash_of: impl Fn(u32) -> u64) {
        let old = std::mem::replace(&mut self.entries, vec![0; size]);
        for entry in old.into_iter().filter(|&e| e != 0) {
            let slot = (entry & 0x00FF_FFFF) - 1;
            self.place(hash_of(slot), slot);
        }
    }

    pub(super) fn place(&mut self, hash: u64, slot: u32) {
        let mask = self.entries.len() - 1;
        let mut pos = self.home(hash);
        while self.entries[pos] != 0 {
            pos = (pos + 1) & mask;
        }
        self.entries[pos] = Self::tag(hash) << 24 | (slot + 1);
    }

    /// Removes `slot`, indexed under `hash`; `hash_of` as for insert.
    pub(super) fn remove(&mut self, hash: u64, slot: u32, hash_of: impl Fn(u32) -> u64) {
        if self.entries.is_empty() {
            return;
        }
        let mask = self.entries.len() - 1;
        let mut pos = self.home(hash);
        loop {
            let entry = self.entries[pos];
            if entry == 0 {
                return;
            }
            if (entry & 0x00FF_FFFF) - 1 == slot {
                break;
            }
            pos = (pos + 1) & mask;
        }
        // Backward-shift deletion: move later entries of the same run into
        // the hole when their home position allows it.
        let mut hole = pos;
        let mut next = (pos + 1) & mask;
        loop {
            let entry = self.entries[next];
            if entry == 0 {
                break;
            }
            let home = self.home(hash_of((entry & 0x00FF_FFFF) - 1));
            // The entry may move to `hole` if `hole` lies cyclically in
            // [home, next).
            if (next.wrapping_sub(home) & mask) >= (next.wrapping_sub(hole) & mask) {
                self.entries[hole] = entry;
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.entries[hole] = 0;
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The digest index agrees with a plain map over random inserts and
    /// removals, through growth, presizing and wrap-around, with colliding
    /// homes and tags (hashes drawn from a small range).
    #[test]
    pub(super) fn slot_index_agrees_with_a_map() {
        let mut index = SlotIndex::default();
        let mut model: HashMap<u32, u64> = HashMap::new();
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..200_000u32 {
            let roll = next();
            let slot = (roll % 4096) as u32;
            if model.contains_key(&slot) && roll % 3 != 0 {
                let hash = model.remove(&slot).unwrap();
                let hashes = model.clone();
                index.remove(hash, slot, |s| hashes[&s]);
            } else if !model.contains_key(&slot) {
                // Few distinct hashes: long runs, shared tags.
                let hash = (next() % 64).wrapping_mul(0x0101_0101_0101_0101) ^ u64::from(round % 7);
                let hashes = model.clone();
                index.insert(hash, slot, |s| hashes[&s]);
                model.insert(slot, hash);
            }
            if round % 50_000 == 25_000 {
                // Presized mid-run, as replay does before filling a shard:
                // a resize that drops or misplaces an entry fails below.
                let hashes = model.clone();
                index.reserve(model.len() * 3, |s| hashes[&s]);
            }
            if round % 997 == 0 {
                for (&slot, &hash) in &model {
                    assert_eq!(index.find(hash, |s| s == slot), Some(slot), "round {round}");
                }
                assert_eq!(index.len, model.len());
            }
        }
        for (&slot, &hash) in &model {
            assert_eq!(index.find(hash, |s| s == slot), Some(slot));
        }
        assert_eq!(index.find(12345, |s| !model.contains_key(&s)), None);
    }
}
