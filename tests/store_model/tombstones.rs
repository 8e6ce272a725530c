use crate::*;

/// Whether the store still remembers a removed credential's death.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Remembered {
    Yes,
    /// Its batch overflowed the capacity: some of the batch were forgotten
    /// and the model does not know which.
    Maybe,
    No,
}

/// The tombstones by digest (and by credential id, which go with them), as
/// batches in the store's insertion order. A call that removes records in
/// an order the model knows (RevokeThread and a Mint's replacement, oldest
/// first; one credential) writes one batch per record; a sweep writes one
/// batch of all it removed, whose inner order only the store knows.
///
/// The store keeps at most `capacity` tombstones, dropping the oldest
/// first, and forgets those recorded at or before `now - retention` at
/// every sweep. The capacity keeps the newest `capacity` of the whole
/// sequence, so the model knows exactly how many of each batch are
/// remembered (`kept`); only which members of a partly kept batch remain
/// is unknown.
///
/// Every batch ever recorded stays in `history`, so that a restart can be
/// modelled as the store's replay does it (see [`Graves::replay`]).
#[derive(Debug, Default)]
pub(crate) struct Graves {
    /// Every batch recorded, by sequence number.
    pub(crate) history: Vec<GraveBatch>,
    /// The batches of which some are remembered, oldest first: their
    /// sequence numbers and how many of each are remembered.
    pub(crate) batches: VecDeque<(u64, usize)>,
    pub(crate) capacity: usize,
    /// Sum of the remembered counts: what [`Store::tombstone_count`] must
    /// say.
    pub(crate) kept: usize,
}

/// One batch of tombstones: when it was recorded, how many, and which
/// credentials may still be remembered.
#[derive(Debug)]
pub(crate) struct GraveBatch {
    pub(crate) at: Millis,
    /// How many tombstones it recorded.
    pub(crate) size: usize,
    /// Credential indexes that may still be remembered: the batch less
    /// those the store was seen to forget. The store drops a partly kept
    /// batch's members in one order of its own, before and after a
    /// restart, so what it was seen to forget stays forgotten.
    pub(crate) members: Vec<usize>,
}

impl Graves {
    /// Records one batch; returns its sequence number.
    pub(crate) fn record(&mut self, members: Vec<usize>, at: Millis) -> Option<u64> {
        if self.capacity == 0 || members.is_empty() {
            return None;
        }
        let seq = self.history.len() as u64;
        self.history.push(GraveBatch {
            at,
            size: members.len(),
            members,
        });
        self.remember(seq);
        Some(seq)
    }

    /// Puts the batch `seq` after the remembered ones, dropping the oldest
    /// beyond the capacity.
    fn remember(&mut self, seq: u64) {
        let size = self.history[seq as usize].size;
        self.kept += size;
        self.batches.push_back((seq, size));
        let mut over = self.kept.saturating_sub(self.capacity);
        while over > 0 {
            let front = self.batches.front_mut().expect("kept counts batches");
            if front.1 <= over {
                over -= front.1;
                self.kept -= front.1;
                self.batches.pop_front();
            } else {
                front.1 -= over;
                self.kept -= over;
                over = 0;
            }
        }
    }

    /// The sweep's eviction by age: everything recorded at or before
    /// `cutoff` goes.
    pub(crate) fn evict_older_than(&mut self, cutoff: Millis) {
        while let Some(&(seq, kept)) = self.batches.front() {
            if self.history[seq as usize].at > cutoff {
                return;
            }
            self.batches.pop_front();
            self.kept -= kept;
        }
    }

    /// What the store's replay of its journal rebuilds while
    /// [`KNOWN_BUG_REPLAY_KEEPS_AGED_TOMBSTONES`] holds: every tombstone
    /// ever recorded, in order, bounded by the capacity only (no sweep
    /// runs during replay), so those a sweep had forgotten by age are back
    /// until the next sweep.
    pub(crate) fn replay(&mut self) {
        self.batches.clear();
        self.kept = 0;
        for seq in 0..self.history.len() as u64 {
            self.remember(seq);
        }
    }

    /// How many of the batch `seq` are remembered, and its members, if any
    /// of it is.
    fn batch(&self, seq: u64) -> Option<(usize, &GraveBatch)> {
        let index = self.batches.binary_search_by_key(&seq, |b| b.0).ok()?;
        Some((self.batches[index].1, &self.history[seq as usize]))
    }

    /// Whether the store must, may or must not still remember `cred`,
    /// which joined batch `seq`.
    pub(crate) fn remembered(&self, seq: Option<u64>, cred: usize) -> Remembered {
        let Some((kept, batch)) = seq.and_then(|seq| self.batch(seq)) else {
            return Remembered::No;
        };
        if !batch.members.contains(&cred) {
            Remembered::No
        } else if kept == batch.members.len() {
            Remembered::Yes
        } else {
            Remembered::Maybe
        }
    }

    /// The store answered that it forgot `cred`, whose batch was partly
    /// kept: it leaves the batch, which must still hold its `kept`.
    pub(crate) fn forgotten(&mut self, seq: Option<u64>, cred: usize) -> Result<(), String> {
        let Some((kept, _)) = seq.and_then(|seq| self.batch(seq)) else {
            return Ok(());
        };
        let batch = &mut self.history[seq.expect("found") as usize];
        batch.members.retain(|&m| m != cred);
        if batch.members.len() < kept {
            return Err(format!(
                "the store forgot more of a sweep's tombstones than its capacity {} drops: \
                 {} of the batch remain, {kept} must",
                self.capacity,
                batch.members.len(),
            ));
        }
        Ok(())
    }
}

/// One owner's newest dead credential of a thread, as the thread
/// tombstones hold it: candidates are usually one credential; a sweep
/// that removed two of the same thread and owner minted in the same
/// millisecond keeps whichever it removed last, which the model does not
/// know.
#[derive(Debug, Clone)]
pub(crate) struct ThreadGrave {
    pub(crate) owner: usize,
    pub(crate) created_at: Millis,
    pub(crate) recorded_at: Millis,
    pub(crate) candidates: Vec<usize>,
}

/// The per-thread tombstones (what Touch by thread answers once a
/// thread's records are gone), simulated as `src/store/tombstones.rs`
/// specifies them: per thread and owner the dead credential minted last
/// (of two minted in the same millisecond, the later death), bounded by
/// age and by a capacity on threads (and twice that on queued entries).
#[derive(Debug)]
pub(crate) struct ThreadGraves {
    pub(crate) by_thread: BTreeMap<usize, Vec<ThreadGrave>>,
    pub(crate) order: VecDeque<(Millis, usize, usize)>,
    pub(crate) capacity: usize,
    /// Whether the simulation follows the store exactly. It stops when a
    /// sweep removes several records (in an order only the store knows)
    /// while the capacity may be reached later (which entries go then
    /// depends on that order), and resumes once everything recorded until
    /// then is past its retention, when both must be empty.
    pub(crate) exact: bool,
    /// The capacity exceeds every death a run can record, so no order
    /// matters (but that of ties, kept as candidates).
    pub(crate) never_full: bool,
    pub(crate) latest_recorded: Millis,
    /// The latest eviction cutoff: nothing recorded at or before it is
    /// remembered.
    pub(crate) cutoff: Millis,
    /// Every death recorded, in order, for [`ThreadGraves::replay`].
    pub(crate) log: Vec<ThreadDeaths>,
}

/// What one call recorded in the thread tombstones: one death in an order
/// the model knows, or a sweep's batch of (thread, owner, mint time,
/// credential) in the store's order.
#[derive(Debug, Clone)]
pub(crate) enum ThreadDeaths {
    One {
        thread: usize,
        owner: usize,
        created_at: Millis,
        candidates: Vec<usize>,
        now: Millis,
    },
    Batch {
        deaths: Vec<(usize, usize, Millis, usize)>,
        now: Millis,
    },
}

impl ThreadGraves {
    /// Empty; `deaths_at_most` is how many records a run can remove.
    pub(crate) fn new(capacity: usize, deaths_at_most: usize) -> Self {
        ThreadGraves {
            by_thread: BTreeMap::new(),
            order: VecDeque::new(),
            capacity,
            exact: true,
            never_full: capacity >= 2 * deaths_at_most,
            latest_recorded: 0,
            cutoff: 0,
            log: Vec::new(),
        }
    }

    /// `ThreadTombstones::record` for one death whose order the model knows.
    pub(crate) fn record(
        &mut self,
        thread: usize,
        owner: usize,
        created_at: Millis,
        candidates: Vec<usize>,
        now: Millis,
    ) {
        self.log.push(ThreadDeaths::One {
            thread,
            owner,
            created_at,
            candidates: candidates.clone(),
            now,
        });
        self.record_one(thread, owner, created_at, candidates, now);
    }

    /// [`ThreadGraves::record`] without the log.
    fn record_one(
        &mut self,
        thread: usize,
        owner: usize,
        created_at: Millis,
        candidates: Vec<usize>,
        now: Millis,
    ) {
        if self.capacity == 0 {
            return;
        }
        self.latest_recorded = now;
        let deaths = self.by_thread.entry(thread).or_default();
        let grave = ThreadGrave {
            owner,
            created_at,
            recorded_at: now,
            candidates,
        };
        match deaths.iter_mut().find(|d| d.owner == owner) {
            Some(known) if known.created_at > created_at => return,
            Some(known) => *known = grave,
            None => deaths.push(grave),
        }
        self.order.push_back((now, thread, owner));
        while self.order.len() > 2 * self.capacity || self.by_thread.len() > self.capacity {
            let Some((at, thread, owner)) = self.order.pop_front() else {
                break;
            };
            self.forget_if_recorded_at(thread, owner, at);
        }
    }

    /// The deaths of one sweep batch, whose order the model does not know:
    /// per thread and owner the newest by mint time wins whatever the
    /// order (ties are candidates). Exact unless the batch could have
    /// reached a capacity in some order.
    pub(crate) fn record_unordered(
        &mut self,
        deaths: Vec<(usize, usize, Millis, usize)>,
        now: Millis,
    ) {
        self.log.push(ThreadDeaths::Batch {
            deaths: deaths.clone(),
            now,
        });
        self.record_batch(deaths, now);
    }

    /// [`ThreadGraves::record_unordered`] without the log.
    fn record_batch(&mut self, deaths: Vec<(usize, usize, Millis, usize)>, now: Millis) {
        if self.capacity == 0 || deaths.is_empty() {
            return;
        }
        let mut groups: BTreeMap<(usize, usize), (Millis, Vec<usize>)> = BTreeMap::new();
        for &(thread, owner, created_at, cred) in &deaths {
            let group = groups
                .entry((thread, owner))
                .or_insert((created_at, Vec::new()));
            if created_at > group.0 {
                *group = (created_at, Vec::new());
            }
            if created_at == group.0 {
                group.1.push(cred);
            }
        }
        // In the store's order the batch pushes between one queue entry per
        // thread and owner and one per death, in an order the model does
        // not know; once the queue or the thread count can reach the
        // capacity, which entries go depends on both.
        if deaths.len() > 1 && !self.never_full {
            self.exact = false;
        }
        for ((thread, owner), (created_at, candidates)) in groups {
            self.record_one(thread, owner, created_at, candidates, now);
        }
    }

    /// What the store's replay rebuilds while
    /// [`KNOWN_BUG_REPLAY_KEEPS_AGED_TOMBSTONES`] holds: every death
    /// recorded, in order, bounded by the capacity only, so deaths a sweep
    /// had forgotten by age are back (and keep an older credential's later
    /// death of the same thread and owner out) until the next sweep.
    pub(crate) fn replay(&mut self) {
        let log = std::mem::take(&mut self.log);
        self.by_thread.clear();
        self.order.clear();
        self.exact = true;
        self.latest_recorded = 0;
        self.cutoff = 0;
        for deaths in &log {
            match deaths.clone() {
                ThreadDeaths::One {
                    thread,
                    owner,
                    created_at,
                    candidates,
                    now,
                } => self.record_one(thread, owner, created_at, candidates, now),
                ThreadDeaths::Batch { deaths, now } => self.record_batch(deaths, now),
            }
        }
        self.log = log;
    }

    /// `ThreadTombstones::forget_if_recorded_at`: a queue entry drops its
    /// owner's death of the thread unless that was recorded again later.
    pub(crate) fn forget_if_recorded_at(&mut self, thread: usize, owner: usize, at: Millis) {
        if let Some(deaths) = self.by_thread.get_mut(&thread) {
            deaths.retain(|d| !(d.owner == owner && d.recorded_at <= at));
            if deaths.is_empty() {
                self.by_thread.remove(&thread);
            }
        }
    }

    /// The sweep's eviction by age, and the return to exactness.
    pub(crate) fn evict_older_than(&mut self, cutoff: Millis) {
        self.cutoff = self.cutoff.max(cutoff);
        while self.order.front().is_some_and(|&(at, _, _)| at <= cutoff) {
            let (at, thread, owner) = self.order.pop_front().expect("front exists");
            self.forget_if_recorded_at(thread, owner, at);
        }
        if !self.exact && self.latest_recorded <= cutoff {
            // Everything ever recorded is past its retention in the store
            // too: both are empty, and the simulation is exact again.
            self.by_thread.clear();
            self.order.clear();
            self.exact = true;
        }
    }

    /// The newest remembered death of `thread` within `actor`'s reach: the
    /// credentials it may be (ties by mint time are all accepted) and its
    /// mint time.
    pub(crate) fn newest(&self, thread: usize, actor: usize) -> Option<(Millis, Vec<usize>)> {
        let deaths = self.by_thread.get(&thread)?;
        let covered = || {
            deaths
                .iter()
                .filter(|d| reach(actor).covers(ACTORS[d.owner]))
        };
        let newest = covered().map(|d| d.created_at).max()?;
        Some((
            newest,
            covered()
                .filter(|d| d.created_at == newest)
                .flat_map(|d| d.candidates.iter().copied())
                .collect(),
        ))
    }
}
