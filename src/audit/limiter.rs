//! The per-peer token buckets that rate-limit denial lines.
//!
//! A denial costs the server nothing to refuse, so a keyless flood must not
//! turn into one disk write per attempt. Each peer has a bucket of
//! `burst` lines refilled at `per_second`; a denial that finds it empty is
//! suppressed and counted, and the count rides on that peer's next line.
//!
//! The table is bounded: at [`MAX_PEERS`] the least recently seen peer is
//! forgotten, so a flood of distinct peers costs bounded memory. A forgotten
//! peer's pending count stays in the global total but not on a line, and
//! the peer starts again with a full bucket.

use std::collections::{BTreeMap, HashMap};

use super::PeerKey;
use crate::clock::Millis;

/// The most peers tracked at once: about 100 bytes each, so a few hundred
/// kilobytes however many peers a flood uses.
pub(super) const MAX_PEERS: usize = 4096;

/// Bucket contents are counted in thousandths of a line, so that a refill of
/// `per_second` lines per second is exactly `per_second` units per
/// millisecond: integer arithmetic, no rounding drift.
const UNIT: u64 = 1000;

/// What to do with one denial line.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admit {
    /// Write it, with this many suppressed since the peer's previous line.
    Write(u64),
    /// Drop it; it has been counted.
    Suppress,
}

/// One peer's bucket.
#[derive(Debug)]
struct Bucket {
    /// In [`UNIT`]s, at most `capacity`.
    tokens: u64,
    /// When `tokens` was last refilled.
    refilled: Millis,
    /// Denials suppressed since the peer's last written line.
    suppressed: u64,
    /// The key of this peer in [`Limiter::by_recency`].
    seen: u64,
}

/// Token buckets keyed by peer, with least-recently-seen eviction.
#[derive(Debug)]
pub(super) struct Limiter {
    /// Refill per millisecond in [`UNIT`]s, i.e. lines per second.
    per_ms: u64,
    /// Bucket size in [`UNIT`]s.
    capacity: u64,
    /// The most peers kept.
    max_peers: usize,
    peers: HashMap<PeerKey, Bucket>,
    /// Peers by the sequence number of their last denial, oldest first:
    /// the eviction order. A sequence rather than the time, so that peers
    /// seen within the same millisecond still have an order.
    by_recency: BTreeMap<u64, PeerKey>,
    /// The next sequence number.
    next_seen: u64,
}

impl Limiter {
    /// Buckets of `burst` lines refilled at `per_second`, for at most
    /// `max_peers` peers.
    pub(super) fn new(per_second: u32, burst: u32, max_peers: usize) -> Self {
        Limiter {
            per_ms: u64::from(per_second),
            capacity: u64::from(burst) * UNIT,
            max_peers: max_peers.max(1),
            peers: HashMap::new(),
            by_recency: BTreeMap::new(),
            next_seen: 0,
        }
    }

    /// Takes one line from `peer`'s bucket at `now`, or counts it as
    /// suppressed. A peer not seen before (or forgotten) starts full.
    pub(super) fn admit(&mut self, peer: &PeerKey, now: Millis) -> Admit {
        let seen = self.next_seen;
        self.next_seen += 1;
        let bucket = match self.peers.get_mut(peer) {
            Some(bucket) => {
                self.by_recency.remove(&bucket.seen);
                bucket
            }
            None => {
                if self.peers.len() >= self.max_peers {
                    if let Some((_, oldest)) = self.by_recency.pop_first() {
                        self.peers.remove(&oldest);
                    }
                }
                self.peers.entry(peer.clone()).or_insert(Bucket {
                    tokens: self.capacity,
                    refilled: now,
                    suppressed: 0,
                    seen,
                })
            }
        };
        bucket.seen = seen;
        self.by_recency.insert(seen, peer.clone());

        let elapsed = now.saturating_sub(bucket.refilled);
        bucket.tokens = bucket
            .tokens
            .saturating_add(elapsed.saturating_mul(self.per_ms))
            .min(self.capacity);
        bucket.refilled = bucket.refilled.max(now);
        if bucket.tokens >= UNIT {
            bucket.tokens -= UNIT;
            Admit::Write(std::mem::take(&mut bucket.suppressed))
        } else {
            bucket.suppressed += 1;
            Admit::Suppress
        }
    }

    /// Gives `peer` back a suppressed count that [`Admit::Write`] handed
    /// out for a line that could not be written, so that the peer's next
    /// written line carries it. A peer forgotten meanwhile loses it, as on
    /// eviction (it stays in the global total).
    pub(super) fn restore(&mut self, peer: &PeerKey, suppressed: u64) {
        if let Some(bucket) = self.peers.get_mut(peer) {
            bucket.suppressed = bucket.suppressed.saturating_add(suppressed);
        }
    }

    /// How many peers are tracked.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        debug_assert_eq!(self.peers.len(), self.by_recency.len());
        self.peers.len()
    }

    /// Whether `peer` is tracked.
    #[cfg(test)]
    pub(super) fn tracks(&self, peer: &PeerKey) -> bool {
        self.peers.contains_key(peer)
    }
}
