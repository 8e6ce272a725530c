//! The token buckets that rate-limit denial lines: one per peer, and one
//! for all peers together.
//!
//! A denial costs the server nothing to refuse, so a keyless flood must not
//! turn into one disk write per attempt. Each peer has a bucket of `burst`
//! lines refilled at `per_second`; a denial that finds it empty is
//! suppressed and counted, and the count rides on that peer's next line.
//!
//! A per-peer limit alone does not bound the total: a local attacker can
//! connect from any address of 127/8, a remote one from a whole IPv6
//! prefix, and every fresh address would bring its own burst. So a second,
//! global bucket (the total budget) backs it: a line is written only if the
//! peer's bucket *and* the global one each hold a token, and then one is
//! taken from both. If either is empty, neither is touched, so a peer that
//! is over its own limit does not spend the budget of everyone else, and a
//! peer refused by the budget keeps its own token for its next try. A
//! denial refused by the budget is counted for its peer like any other (its
//! next written line carries `"suppressed"`), and also in a global count
//! that the next written denial line, of whichever peer, carries as
//! `"suppressed_total"`, so the trail shows that the total limit bit. A
//! denial refused by the peer's own bucket is not in that count: the budget
//! did not refuse it, and its peer's line reports it.
//!
//! The table is bounded: at [`MAX_PEERS`] the least recently seen peer is
//! forgotten, so a flood of distinct peers costs bounded memory. A forgotten
//! peer's pending count stays in the global total but not on a line.
//!
//! A peer that enters while the table is full (new, or back after being
//! forgotten) starts with one token, not a full burst. With a full burst, a
//! peer that rotates through more addresses than the table holds would get
//! `burst` lines per address per round, the same as having no per-peer
//! limit, only slower; with one token it gets one line per address, which
//! the total budget bounds. One rather than none, so that the first denial
//! of a genuinely new peer is still on the trail (budget permitting). While
//! the table has room, nobody is rotating at scale, and a new peer gets the
//! full burst, as before.
//!
//! All counts are integers and all time comes from the caller's clock, so
//! tests drive it with a fake one.

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

/// A bucket's refill rate and size, in lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rate {
    /// Lines regained per second (0: none, only the burst).
    pub(super) per_second: u32,
    /// Lines that may be written back to back (0: none; every denial is
    /// only counted).
    pub(super) burst: u32,
}

/// The counts a written denial line carries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Suppressed {
    /// This peer's denials suppressed (by either limit) since its previous
    /// written line: `"suppressed"`.
    pub(super) peer: u64,
    /// Denials of any peer suppressed by the total budget since the
    /// previous written denial line: `"suppressed_total"`.
    pub(super) total: u64,
}

impl Suppressed {
    /// Whether there is nothing to report.
    pub(super) fn is_empty(self) -> bool {
        self == Suppressed::default()
    }
}

/// What to do with one denial line.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admit {
    /// Write it, with these counts.
    Write(Suppressed),
    /// Drop it: the peer's own bucket is empty. It has been counted for the
    /// peer.
    Suppress,
    /// Drop it: the peer had a token but the total budget is spent. It has
    /// been counted for the peer and in the total count.
    SuppressTotal,
}

/// The contents of one bucket.
#[derive(Debug)]
struct Tokens {
    /// In [`UNIT`]s, at most the bucket's capacity.
    tokens: u64,
    /// When `tokens` was last refilled.
    refilled: Millis,
}

impl Tokens {
    /// Adds the refill since the last one, up to `capacity`. A `now` older
    /// than the last refill (two callers read the clock, then took the lock
    /// in the other order) adds nothing and does not move time back.
    fn refill(&mut self, now: Millis, per_ms: u64, capacity: u64) {
        let elapsed = now.saturating_sub(self.refilled);
        self.tokens = self
            .tokens
            .saturating_add(elapsed.saturating_mul(per_ms))
            .min(capacity);
        self.refilled = self.refilled.max(now);
    }

    /// Whether a whole line's worth is there.
    fn has_one(&self) -> bool {
        self.tokens >= UNIT
    }

    /// Takes one line's worth; only after [`Tokens::has_one`].
    fn take_one(&mut self) {
        self.tokens -= UNIT;
    }
}

/// One peer's bucket.
#[derive(Debug)]
struct Bucket {
    tokens: Tokens,
    /// Denials suppressed since the peer's last written line.
    suppressed: u64,
    /// The key of this peer in [`Limiter::by_recency`].
    seen: u64,
}

/// Token buckets keyed by peer, with least-recently-seen eviction, and the
/// total budget over all of them.
#[derive(Debug)]
pub(super) struct Limiter {
    /// Per-peer refill per millisecond in [`UNIT`]s, i.e. lines per second.
    per_ms: u64,
    /// Per-peer bucket size in [`UNIT`]s.
    capacity: u64,
    /// Total refill per millisecond in [`UNIT`]s.
    total_per_ms: u64,
    /// Total bucket size in [`UNIT`]s.
    total_capacity: u64,
    /// The total budget.
    total: Tokens,
    /// Denials suppressed by the total budget since the last written
    /// denial line.
    suppressed_total: u64,
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
    /// Buckets of `peer.burst` lines refilled at `peer.per_second` for at
    /// most `max_peers` peers, behind a total budget of `total.burst` lines
    /// refilled at `total.per_second`. The budget starts full.
    pub(super) fn new(peer: Rate, total: Rate, max_peers: usize) -> Self {
        let total_capacity = u64::from(total.burst) * UNIT;
        Limiter {
            per_ms: u64::from(peer.per_second),
            capacity: u64::from(peer.burst) * UNIT,
            total_per_ms: u64::from(total.per_second),
            total_capacity,
            total: Tokens {
                tokens: total_capacity,
                refilled: 0,
            },
            suppressed_total: 0,
            max_peers: max_peers.max(1),
            peers: HashMap::new(),
            by_recency: BTreeMap::new(),
            next_seen: 0,
        }
    }

    /// Takes one line from `peer`'s bucket and one from the total budget at
    /// `now` if both have one, or counts the line as suppressed. A peer not
    /// seen before (or forgotten) starts full, or with one token if the
    /// table is full (see the module docs).
    pub(super) fn admit(&mut self, peer: &PeerKey, now: Millis) -> Admit {
        let seen = self.next_seen;
        self.next_seen += 1;
        let bucket = match self.peers.get_mut(peer) {
            Some(bucket) => {
                self.by_recency.remove(&bucket.seen);
                bucket
            }
            None => {
                let mut tokens = self.capacity;
                if self.peers.len() >= self.max_peers {
                    if let Some((_, oldest)) = self.by_recency.pop_first() {
                        self.peers.remove(&oldest);
                    }
                    tokens = tokens.min(UNIT);
                }
                self.peers.entry(peer.clone()).or_insert(Bucket {
                    tokens: Tokens {
                        tokens,
                        refilled: now,
                    },
                    suppressed: 0,
                    seen,
                })
            }
        };
        bucket.seen = seen;
        self.by_recency.insert(seen, peer.clone());

        bucket.tokens.refill(now, self.per_ms, self.capacity);
        if !bucket.tokens.has_one() {
            // Over its own limit: the total budget is not consulted, so this
            // peer cannot spend it.
            bucket.suppressed += 1;
            return Admit::Suppress;
        }
        self.total
            .refill(now, self.total_per_ms, self.total_capacity);
        if !self.total.has_one() {
            // The peer keeps its token: it was not the one over the limit.
            bucket.suppressed += 1;
            self.suppressed_total += 1;
            return Admit::SuppressTotal;
        }
        bucket.tokens.take_one();
        self.total.take_one();
        Admit::Write(Suppressed {
            peer: std::mem::take(&mut bucket.suppressed),
            total: std::mem::take(&mut self.suppressed_total),
        })
    }

    /// Gives back the counts that [`Admit::Write`] handed out for a line
    /// that could not be written, so that the next written lines carry
    /// them: the peer's count to `peer` (a peer forgotten meanwhile loses
    /// it, as on eviction; it stays in the global total), the total count
    /// to the total budget's.
    pub(super) fn restore(&mut self, peer: &PeerKey, suppressed: Suppressed) {
        if let Some(bucket) = self.peers.get_mut(peer) {
            bucket.suppressed = bucket.suppressed.saturating_add(suppressed.peer);
        }
        self.suppressed_total = self.suppressed_total.saturating_add(suppressed.total);
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
