//! Which records were used since the last renewal checkpoint: one bit per
//! slot of a record shard, and one summary bit per word of those, so that a
//! checkpoint visits the records used since the previous one and not every
//! live record (1M live with 10k used costs 10k visits plus 244 summary
//! words, not a million).
//!
//! Resolve sets a bit with a plain load when it is already set (a hot
//! credential costs no write) and one `fetch_or` otherwise, under its
//! shard's read lock: no allocation, no lock of its own. The vectors grow
//! only under the shard's write lock, when a slot is first allocated.

use std::sync::atomic::{AtomicU64, Ordering};

/// The used-slot bits of one record shard.
#[derive(Debug, Default)]
pub(in crate::store) struct UsedSlots {
    /// Bit `slot % 64` of word `slot / 64`: used since the last drain.
    words: Vec<AtomicU64>,
    /// Bit `w % 64` of summary word `w / 64`: word `w` may be non-zero.
    summary: Vec<AtomicU64>,
}

impl UsedSlots {
    /// Makes room for slots below `slots`; called with the shard written.
    pub(in crate::store) fn cover(&mut self, slots: u32) {
        let words = (slots as usize).div_ceil(64);
        if self.words.len() < words {
            self.words.resize_with(words, AtomicU64::default);
            self.summary
                .resize_with(words.div_ceil(64), AtomicU64::default);
        }
    }

    /// Notes a use of `slot`.
    #[inline]
    pub(in crate::store) fn mark(&self, slot: u32) {
        let (word, bit) = (slot as usize / 64, 1u64 << (slot % 64));
        let Some(cell) = self.words.get(word) else {
            return;
        };
        if cell.load(Ordering::Relaxed) & bit != 0 {
            return;
        }
        // The summary bit goes up after the slot's bit, so a drain that
        // misses the summary bit leaves the slot's bit for the next one.
        if cell.fetch_or(bit, Ordering::AcqRel) == 0 {
            self.summary[word / 64].fetch_or(1 << (word % 64), Ordering::AcqRel);
        }
    }

    /// Calls `used` with every slot marked since the last drain, clearing
    /// the marks. A use marked while this runs is seen now or by the next
    /// drain, never lost: the summary bit is cleared before the words it
    /// covers are read.
    pub(in crate::store) fn drain(&self, mut used: impl FnMut(u32)) {
        for (s, summary) in self.summary.iter().enumerate() {
            let mut dirty = summary.swap(0, Ordering::AcqRel);
            while dirty != 0 {
                let w = s * 64 + dirty.trailing_zeros() as usize;
                dirty &= dirty - 1;
                let mut bits = self.words[w].swap(0, Ordering::AcqRel);
                while bits != 0 {
                    used((w * 64) as u32 + bits.trailing_zeros());
                    bits &= bits - 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Catches a drain that forgets a slot, reports one twice, or keeps
    /// marks after draining.
    #[test]
    fn drain_reports_each_marked_slot_once() {
        let mut used = UsedSlots::default();
        used.cover(10_000);
        for slot in [0, 1, 63, 64, 4095, 4096, 9999, 1] {
            used.mark(slot);
        }
        let mut seen = Vec::new();
        used.drain(|slot| seen.push(slot));
        seen.sort_unstable();
        assert_eq!(seen, [0, 1, 63, 64, 4095, 4096, 9999]);
        let mut again = Vec::new();
        used.drain(|slot| again.push(slot));
        assert!(again.is_empty());
        used.mark(5);
        used.drain(|slot| again.push(slot));
        assert_eq!(again, [5]);
    }
}
