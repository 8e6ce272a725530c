//! The store against a plain model, as a specification: long random
//! sequences of every owner call, Resolve, the sweeper and the clock, by
//! several callers and an administrator, under several configurations,
//! checked call by call.
//!
//! The store's layout (slabs, slot indexes, per-thread lists through the
//! records, revocation scopes stamped by epoch, deadline queues that
//! re-queue lazily) is built for speed; the model is a list of credentials,
//! each with its own `last_used`, deadlines, revocation and tombstone, too
//! simple to be wrong. Every answer is compared in full: a Resolve's or a
//! Touch's deadlines, scopes, labels, thread, instance, kind, owner and
//! mint time; every refusal's reason (unknown, or dead and why, down to the
//! revocation's cause); every count a call reports; and after every step
//! what the store holds (records, budgets, queued deadlines, tombstones).
//!
//! Time jumps are drawn from nothing to months, and a quarter of them land
//! one millisecond before, at or after some credential's idle deadline, so
//! deadlines are really reached, renewals really slide them, and the sweeps
//! really remove what died.
//!
//! Where the model cannot know the store's order it says so, and only
//! there it accepts more than one answer: the sweeper removes a batch of
//! records in an order of its own (shards and heap order), so when a batch
//! overflows the tombstone capacity the model knows how many of that batch
//! are remembered but not which ([`Graves`]), and accepts "dead, for the
//! right reason" or "unknown" for exactly those; the same holds for the
//! per-thread tombstones when a batch could overflow theirs
//! ([`ThreadGraves::exact`]). Each refinement is checked: a credential the
//! store forgot leaves its batch, and a batch may never hold fewer
//! credentials than the count the capacity leaves it.
//!
//! One count follows the store's documented laziness rather than exact
//! liveness: RevokeAll counts a credential past its deadline that no sweep
//! has removed yet, as `RevokeAllResponse.revoked` says it may (its reason
//! stays the deadline's); RevokeThread and RevokeCredential count only what
//! was live.
//!
//! The cases: the defaults; an absolute lifetime; 50 ms idle and 1 s max
//! lifetime; three tombstones kept 5 s; small per-thread, quota and budget
//! limits. Each asserts what its runs reached ([`Coverage`]): live answers
//! one millisecond before a deadline and deaths at it, every death reason
//! and revocation cause, scope refusals, forgotten tombstones, sweeps that
//! remove, re-queue and reclaim, and (where configured) every limit and
//! the tombstone overflow, so a generator that stops reaching them fails.
//!
//! Each check names, in its doc comment, the broken implementation it
//! catches. Checked by breaking the store, each caught by at least one
//! case with a message naming the step, the call and the credential's
//! model state: `now >= died_at` written `now > died_at` in `death`; a
//! Resolve that renews before the scope check; RevokeThread recording the
//! cause `credential`; `ProviderInstance` and `Caller` swapped in
//! `first_revocation`; no absolute-lifetime cap on `expires_at`; the idle
//! deadline not capped by `expires_at`; `expires_at` counted from mint
//! instead of the latest use; a renewal that skips the next millisecond;
//! a revocation at a deadline's instant winning the tie; `IdleTimeout`
//! named for an idle deadline equal to `expires_at`; overrides not clamped
//! to 1 ms; tombstone retention and capacity off by one (by digest and by
//! thread); a thread tombstone winning a tie over a held record; a Touch
//! listing one more than its limit; a quota that ignores the replacement;
//! Touch by thread renewing what is out of reach; RevokeThread counting
//! dead records out of reach; a sweeper that drops a live record's queue
//! entry.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use credential_authority::clock::{FakeClock, Millis};
use credential_authority::store::{
    Budget, CredentialRevocation, DeadCredential, Deadlines, DeathReason, Labels, NewCredential,
    Reach, Rejection, Resolved, RevocationCause, RevokeAllTarget, Scopes, Store, StoreConfig,
    SweepReport, ThreadRevocation, Touched,
};
use credential_authority::token::{CredentialId, TokenDigest};

const START: Millis = 1_800_000_000_000;

const SECOND: Millis = 1_000;
const MINUTE: Millis = 60 * SECOND;
const HOUR: Millis = 60 * MINUTE;
const DAY: Millis = 24 * HOUR;

/// The callers that act: two that reach only what they minted, and an
/// administrator that reaches everything.
const ACTORS: [&str; 3] = ["adapter-a", "adapter-b", "admin"];

/// The administrator's index in [`ACTORS`].
const ADMIN: usize = 2;

/// Threads the calls pick from: few enough that threads fill up and
/// collide, many enough that the per-thread state is not one list.
const THREADS: usize = 24;

/// Provider instances: two per caller, so instances are claimed, shared by
/// the administrator and fought over.
const INSTANCES: usize = 2 * ACTORS.len();

/// The scopes a Mint grants a prefix of, and a Resolve may require.
const SCOPES: [&str; 4] = ["scope-0", "scope-1", "scope-2", "scope-3"];

/// The labels a Mint gives a prefix of (sorted by key, as the service
/// passes them).
const LABELS: [(&str, &str); 3] = [("env", "env-7"), ("region", "eu-west"), ("tier", "gold")];

/// How many of the latest removed credentials the calls favour.
const RECENTLY_REMOVED: usize = 8;

/// The provider kinds a Mint may name.
const KINDS: [Option<&str>; 3] = [None, Some("claude"), Some("codex")];

/// What `actor`'s calls may act on: its own credentials, or (the
/// administrator) everyone's.
fn reach(actor: usize) -> Reach<'static> {
    if actor == ADMIN {
        Reach::All
    } else {
        Reach::MintedBy(ACTORS[actor])
    }
}

/// Thread ids as the service validates them (UUID-shaped).
fn thread_name(t: usize) -> String {
    format!("{t:08x}-0000-4000-8000-000000000000")
}

/// Provider instance ids.
fn instance_name(i: usize) -> String {
    format!("adapter-{i}")
}

/// A duration in the store's unit, saturating as the store does.
fn millis(d: Duration) -> Millis {
    d.as_millis().min(u128::from(Millis::MAX)) as Millis
}

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

/// One credential as the model sees it: what it was minted with, its own
/// clock, and how it ended.
#[derive(Debug)]
struct Cred {
    digest: TokenDigest,
    id: CredentialId,
    thread: usize,
    instance: usize,
    owner: usize,
    kind: Option<&'static str>,
    scopes: Vec<&'static str>,
    labels: Vec<(&'static str, &'static str)>,
    /// Its lifetimes after clamping: a per-credential override never above
    /// the store's and never below 1 ms; `Millis::MAX` for no absolute
    /// lifetime.
    idle_timeout: Millis,
    max_lifetime: Millis,
    absolute_lifetime: Millis,
    created_at: Millis,
    /// Mint counts as the first use; every successful Resolve or Touch
    /// moves it to the call's time.
    last_used: Millis,
    /// The first RevokeAll that reached it while its record was held and
    /// no earlier RevokeAll had: when, and its cause.
    revoked_all: Option<(Millis, RevocationCause)>,
    /// `None` while its record is held; else the reason its tombstone
    /// gives, fixed when the record went.
    removed: Option<DeathReason>,
    removed_at: Millis,
    /// The batch of tombstones it joined when its record went (see
    /// [`Graves`]); `None` when none was written (capacity 0).
    grave: Option<u64>,
    /// When the sweeper's queue entry for it falls due: set at mint, moved
    /// when a sweep finds it live and due, gone when a sweep finds it due
    /// and removed. A record removed by anything else leaves its entry
    /// behind until a sweep reaches it.
    queued: Option<Millis>,
    /// What it costs the byte budget: thread, instance, kind, scopes and
    /// labels, as lengths.
    bytes: u64,
}

impl Cred {
    /// Whether its record is still in the store (live, or dead and not
    /// yet removed).
    fn held(&self) -> bool {
        self.removed.is_none()
    }

    /// Whether `actor`'s calls reach it.
    fn within(&self, actor: usize) -> bool {
        reach(actor).covers(ACTORS[self.owner])
    }

    /// Sliding renewal, as specified: `expires_at` is the latest use plus
    /// the max lifetime, never past mint time plus the absolute lifetime;
    /// the idle deadline is the latest use plus the idle timeout, never
    /// past `expires_at`.
    fn deadlines(&self) -> Deadlines {
        let expires_at = self
            .last_used
            .saturating_add(self.max_lifetime)
            .min(self.created_at.saturating_add(self.absolute_lifetime));
        Deadlines {
            expires_at,
            idle_expires_at: self
                .last_used
                .saturating_add(self.idle_timeout)
                .min(expires_at),
        }
    }

    /// Why it is dead at `now`, if it is. A credential dies at its idle
    /// deadline itself (dead at `now >= deadline`): of idle timeout when
    /// that came before `expires_at`, else of expiry. A revocation kills
    /// at its instant; the first death names the reason, and a deadline at
    /// the revocation's very instant counts as first.
    fn death(&self, now: Millis) -> Option<DeathReason> {
        let idle_deadline = self.last_used.saturating_add(self.idle_timeout);
        let Deadlines {
            expires_at,
            idle_expires_at: died_at,
        } = self.deadlines();
        let by_time = (now >= died_at).then_some(if idle_deadline < expires_at {
            DeathReason::IdleTimeout
        } else {
            DeathReason::Expired
        });
        match (by_time, self.revoked_all) {
            (Some(reason), Some((revoked_at, _))) if died_at <= revoked_at => Some(reason),
            (_, Some((_, cause))) => Some(DeathReason::Revoked(cause)),
            (by_time, None) => by_time,
        }
    }

    /// Alive at `now`: neither past its deadline nor revoked.
    fn live(&self, now: Millis) -> bool {
        self.death(now).is_none()
    }

    /// Counted by the RevokeAll counts and the owner's quota: held and not
    /// ended by a RevokeAll (a record past its deadline counts until it is
    /// removed, as documented for the quota).
    fn counted(&self) -> bool {
        self.held() && self.revoked_all.is_none()
    }

    /// What Resolve answers for it while it is live.
    fn resolved(&self) -> Resolved {
        Resolved {
            credential_id: self.id,
            thread_id: thread_name(self.thread),
            provider_instance_id: instance_name(self.instance),
            provider_kind: self.kind.map(str::to_owned),
            minted_by: ACTORS[self.owner].to_owned(),
            created_at: self.created_at,
            deadlines: self.deadlines(),
            scopes: self.scopes.iter().map(|s| s.to_string()).collect(),
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Its state relative to `START`, for failure messages.
    fn describe(&self, now: Millis) -> String {
        let at = |t: Millis| {
            if t >= Millis::MAX / 2 {
                "never".to_owned()
            } else {
                format!("+{}", t.saturating_sub(START))
            }
        };
        let d = self.deadlines();
        format!(
            "credential {} of {} on thread {} instance {}: minted {}, last used {}, idle deadline {}, \
             expires {}, revoked by RevokeAll {:?}, record {}, death at now (+{}) {:?}",
            self.id,
            ACTORS[self.owner],
            self.thread,
            self.instance,
            at(self.created_at),
            at(self.last_used),
            at(d.idle_expires_at),
            at(d.expires_at),
            self.revoked_all.map(|(t, c)| (at(t), c)),
            match self.removed {
                None => "held".to_owned(),
                Some(reason) => format!("removed at {} ({reason:?})", at(self.removed_at)),
            },
            now - START,
            self.death(now),
        )
    }
}

/// Whether the store still remembers a removed credential's death.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Remembered {
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
#[derive(Debug, Default)]
struct Graves {
    batches: VecDeque<GraveBatch>,
    next_seq: u64,
    capacity: usize,
    /// Sum of `kept`: what [`Store::tombstone_count`] must say.
    kept: usize,
}

#[derive(Debug)]
struct GraveBatch {
    seq: u64,
    at: Millis,
    /// Credential indexes that may still be remembered.
    members: Vec<usize>,
    /// How many of `members` are remembered.
    kept: usize,
}

impl Graves {
    /// Records one batch; returns its sequence number.
    fn record(&mut self, members: Vec<usize>, at: Millis) -> Option<u64> {
        if self.capacity == 0 || members.is_empty() {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.kept += members.len();
        self.batches.push_back(GraveBatch {
            seq,
            at,
            kept: members.len(),
            members,
        });
        let mut over = self.kept.saturating_sub(self.capacity);
        while over > 0 {
            let front = self.batches.front_mut().expect("kept counts batches");
            if front.kept <= over {
                over -= front.kept;
                self.kept -= front.kept;
                self.batches.pop_front();
            } else {
                front.kept -= over;
                self.kept -= over;
                over = 0;
            }
        }
        Some(seq)
    }

    /// The sweep's eviction by age: everything recorded at or before
    /// `cutoff` goes.
    fn evict_older_than(&mut self, cutoff: Millis) {
        while self.batches.front().is_some_and(|b| b.at <= cutoff) {
            let gone = self.batches.pop_front().expect("front exists");
            self.kept -= gone.kept;
        }
    }

    /// Where the batch `seq` is, if any of it is still remembered.
    fn batch(&self, seq: u64) -> Option<usize> {
        self.batches.binary_search_by_key(&seq, |b| b.seq).ok()
    }

    /// Whether the store must, may or must not still remember `cred`,
    /// which joined batch `seq`.
    fn remembered(&self, seq: Option<u64>, cred: usize) -> Remembered {
        let Some(batch) = seq.and_then(|seq| self.batch(seq)) else {
            return Remembered::No;
        };
        let batch = &self.batches[batch];
        if !batch.members.contains(&cred) {
            Remembered::No
        } else if batch.kept == batch.members.len() {
            Remembered::Yes
        } else {
            Remembered::Maybe
        }
    }

    /// The store answered that it forgot `cred`, whose batch was partly
    /// kept: it leaves the batch, which must still hold its `kept`.
    fn forgotten(&mut self, seq: Option<u64>, cred: usize) -> Result<(), String> {
        let Some(index) = seq.and_then(|seq| self.batch(seq)) else {
            return Ok(());
        };
        let batch = &mut self.batches[index];
        batch.members.retain(|&m| m != cred);
        if batch.members.len() < batch.kept {
            return Err(format!(
                "the store forgot more of a sweep's tombstones than its capacity {} drops: \
                 {} of the batch remain, {} must",
                self.capacity,
                batch.members.len(),
                batch.kept
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
struct ThreadGrave {
    owner: usize,
    created_at: Millis,
    recorded_at: Millis,
    candidates: Vec<usize>,
}

/// The per-thread tombstones (what Touch by thread answers once a
/// thread's records are gone), simulated as `src/store/tombstones.rs`
/// specifies them: per thread and owner the dead credential minted last
/// (of two minted in the same millisecond, the later death), bounded by
/// age and by a capacity on threads (and twice that on queued entries).
#[derive(Debug)]
struct ThreadGraves {
    by_thread: BTreeMap<usize, Vec<ThreadGrave>>,
    order: VecDeque<(Millis, usize, usize)>,
    capacity: usize,
    /// Whether the simulation follows the store exactly. It stops when a
    /// sweep removes several records (in an order only the store knows)
    /// while the capacity may be reached later (which entries go then
    /// depends on that order), and resumes once everything recorded until
    /// then is past its retention, when both must be empty.
    exact: bool,
    /// The capacity exceeds every death a run can record, so no order
    /// matters (but that of ties, kept as candidates).
    never_full: bool,
    latest_recorded: Millis,
    /// The latest eviction cutoff: nothing recorded at or before it is
    /// remembered.
    cutoff: Millis,
}

impl ThreadGraves {
    /// Empty; `deaths_at_most` is how many records a run can remove.
    fn new(capacity: usize, deaths_at_most: usize) -> Self {
        ThreadGraves {
            by_thread: BTreeMap::new(),
            order: VecDeque::new(),
            capacity,
            exact: true,
            never_full: capacity >= 2 * deaths_at_most,
            latest_recorded: 0,
            cutoff: 0,
        }
    }

    /// `ThreadTombstones::record` for one death whose order the model knows.
    fn record(
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
    fn record_unordered(&mut self, deaths: Vec<(usize, usize, Millis, usize)>, now: Millis) {
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
            self.record(thread, owner, created_at, candidates, now);
        }
    }

    /// `ThreadTombstones::forget_if_recorded_at`: a queue entry drops its
    /// owner's death of the thread unless that was recorded again later.
    fn forget_if_recorded_at(&mut self, thread: usize, owner: usize, at: Millis) {
        if let Some(deaths) = self.by_thread.get_mut(&thread) {
            deaths.retain(|d| !(d.owner == owner && d.recorded_at <= at));
            if deaths.is_empty() {
                self.by_thread.remove(&thread);
            }
        }
    }

    /// The sweep's eviction by age, and the return to exactness.
    fn evict_older_than(&mut self, cutoff: Millis) {
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
    fn newest(&self, thread: usize, actor: usize) -> Option<(Millis, Vec<usize>)> {
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

/// What a configuration's limits are, as the model needs them.
#[derive(Debug, Clone, Copy)]
struct ModelLimits {
    idle_timeout: Millis,
    max_lifetime: Millis,
    absolute_lifetime: Millis,
    retention: Millis,
    per_thread: u64,
    credentials: u64,
    bytes: u64,
    touch_reply_limit: usize,
    /// The adapters' quota (the administrator has none).
    quota: Option<u64>,
}

/// The whole model: every credential ever minted (in mint order, which is
/// also each thread's list order), the tombstones, and whether a RevokeAll
/// asked the sweeper for a reclaim pass.
struct Model {
    creds: Vec<Cred>,
    /// Indexes of the credentials whose records are held, in mint order.
    held: Vec<usize>,
    /// The latest removed, newest last: what calls on dead credentials
    /// pick most, so that fresh tombstones (a replacement's, a
    /// revocation's) are read before they age out.
    removed: Vec<usize>,
    graves: Graves,
    thread_graves: ThreadGraves,
    reclaim_pending: bool,
    limits: ModelLimits,
}

/// What Mint's checks decided.
struct MintPlan {
    /// The earlier records the replacement removes, oldest first.
    replaced: Vec<usize>,
}

impl Model {
    /// `deaths_at_most`: how many credentials a run may mint (each dies
    /// once).
    fn new(config: &StoreConfig, quota: Option<u64>, deaths_at_most: usize) -> Self {
        let limits = ModelLimits {
            idle_timeout: millis(config.idle_timeout),
            max_lifetime: millis(config.max_lifetime),
            absolute_lifetime: config.absolute_lifetime.map_or(Millis::MAX, millis),
            retention: millis(config.tombstone_retention),
            per_thread: config.max_credentials_per_thread,
            credentials: config.max_credentials,
            bytes: config.max_credential_bytes,
            touch_reply_limit: config.touch_reply_limit,
            quota,
        };
        Model {
            creds: Vec::new(),
            held: Vec::new(),
            removed: Vec::new(),
            graves: Graves {
                capacity: config.tombstone_capacity,
                ..Graves::default()
            },
            thread_graves: ThreadGraves::new(config.tombstone_capacity, deaths_at_most),
            reclaim_pending: false,
            limits,
        }
    }

    /// The credentials whose records are held, in mint order.
    fn held(&self) -> impl Iterator<Item = &Cred> + Clone {
        self.held.iter().map(|&i| &self.creds[i])
    }

    /// A thread's held records, oldest first: the store's list order.
    fn on_thread(&self, thread: usize) -> Vec<usize> {
        self.held
            .iter()
            .copied()
            .filter(|&i| self.creds[i].thread == thread)
            .collect()
    }

    /// The quota Mint passes for `actor`.
    fn quota(&self, actor: usize) -> Option<u64> {
        self.limits.quota.filter(|_| actor != ADMIN)
    }

    /// Removes records at `now`, each with the reason its tombstone keeps.
    /// `ordered`: the store removes them in this order (one batch of
    /// tombstones each); else in an order of its own (one batch).
    fn remove(&mut self, batch: Vec<(usize, DeathReason)>, ordered: bool, now: Millis) {
        if batch.is_empty() {
            return;
        }
        for &(i, reason) in &batch {
            let c = &mut self.creds[i];
            assert!(c.held(), "the model removes a record twice");
            c.removed = Some(reason);
            c.removed_at = now;
        }
        self.held.retain(|i| !batch.iter().any(|(b, _)| b == i));
        self.removed.extend(batch.iter().map(|&(i, _)| i));
        let excess = self.removed.len().saturating_sub(RECENTLY_REMOVED);
        self.removed.drain(..excess);
        if ordered {
            for &(i, _) in &batch {
                let seq = self.graves.record(vec![i], now);
                let c = &mut self.creds[i];
                c.grave = seq;
                let (thread, owner, created_at) = (c.thread, c.owner, c.created_at);
                self.thread_graves
                    .record(thread, owner, created_at, vec![i], now);
            }
        } else {
            let members: Vec<usize> = batch.iter().map(|&(i, _)| i).collect();
            let seq = self.graves.record(members, now);
            let mut deaths = Vec::new();
            for &(i, _) in &batch {
                let c = &mut self.creds[i];
                c.grave = seq;
                deaths.push((c.thread, c.owner, c.created_at, i));
            }
            self.thread_graves.record_unordered(deaths, now);
        }
    }

    /// Mint's checks in the store's order: the instance's claim, the
    /// replacement's reach, the thread's limit (a full thread first loses
    /// its dead records, even when the Mint is then refused), the owner's
    /// quota, the credential budget, the byte budget; each counted after
    /// the replacement.
    fn check_mint(
        &mut self,
        call: &MintCall,
        bytes: u64,
        now: Millis,
    ) -> Result<MintPlan, Rejection> {
        let actor = call.actor;
        let not_owned = Rejection::NotOwned {
            credential_id: None,
        };
        // An instance belongs to the adapter whose records of it are held
        // (an administrator's claim it for nobody).
        if actor != ADMIN
            && self
                .held()
                .any(|c| c.instance == call.instance && c.owner != actor && c.owner != ADMIN)
        {
            return Err(not_owned);
        }
        let on_thread = self.on_thread(call.thread);
        let limit = self.limits.per_thread;
        let mut replaced = Vec::new();
        if call.replace || on_thread.len() as u64 >= limit {
            let mut kept = 0u64;
            let mut kept_dead = Vec::new();
            for &i in &on_thread {
                let c = &self.creds[i];
                let death = c.death(now);
                let same = call.replace && c.instance == call.instance;
                if same && c.within(actor) {
                    replaced.push(i);
                } else if same && death.is_none() {
                    // A live credential of another caller in the way.
                    return Err(not_owned);
                } else {
                    kept += 1;
                    if let Some(reason) = death {
                        kept_dead.push((i, reason));
                    }
                }
            }
            if kept >= limit {
                kept -= kept_dead.len() as u64;
                self.remove(kept_dead, true, now);
                if kept >= limit {
                    return Err(Rejection::ThreadLimit {
                        thread_id: thread_name(call.thread).into(),
                        limit,
                    });
                }
            }
        }
        if let Some(quota) = self.quota(actor) {
            let own = |c: &&Cred| c.owner == actor && c.counted();
            let live = self.held().filter(own).count() as u64;
            let freed = replaced.iter().map(|&i| &self.creds[i]).filter(own).count() as u64;
            if live.saturating_sub(freed) >= quota {
                return Err(Rejection::OwnerQuota {
                    owner: ACTORS[actor].into(),
                    limit: quota,
                });
            }
        }
        let freed = replaced.len() as u64;
        if (self.held.len() as u64).saturating_sub(freed) + 1 > self.limits.credentials {
            return Err(Rejection::StoreBudget {
                budget: Budget::Credentials,
                limit: self.limits.credentials,
            });
        }
        let held_bytes: u64 = self.held().map(|c| c.bytes).sum();
        let freed_bytes: u64 = replaced.iter().map(|&i| self.creds[i].bytes).sum();
        if held_bytes.saturating_sub(freed_bytes) + bytes > self.limits.bytes {
            return Err(Rejection::StoreBudget {
                budget: Budget::Bytes,
                limit: self.limits.bytes,
            });
        }
        Ok(MintPlan { replaced })
    }

    /// Everything one RevokeAll reaches: held, not ended by an earlier
    /// RevokeAll (whatever its deadlines say), within the target.
    fn revoke_all(&mut self, actor: usize, instance: Option<usize>, now: Millis) -> u64 {
        let cause = match (actor == ADMIN, instance) {
            (true, None) => RevocationCause::All,
            (false, None) => RevocationCause::Caller,
            (_, Some(_)) => RevocationCause::ProviderInstance,
        };
        let mut revoked = 0;
        for &i in &self.held {
            let c = &mut self.creds[i];
            if c.counted() && c.within(actor) && instance.is_none_or(|x| c.instance == x) {
                c.revoked_all = Some((now, cause));
                revoked += 1;
            }
        }
        if revoked > 0 {
            self.reclaim_pending = true;
        }
        revoked
    }

    /// A sweep at `now`: every due queue entry is read (a held record found
    /// dead goes, one found live is queued again at its idle deadline, an
    /// entry of a record already gone is dropped), then tombstones past
    /// their retention go, then a reclaim pass (when a RevokeAll asked for
    /// one) removes every dead record left.
    fn sweep(&mut self, now: Millis) -> SweepReport {
        let mut report = SweepReport::default();
        let mut dead = Vec::new();
        for (i, c) in self.creds.iter_mut().enumerate() {
            let Some(at) = c.queued.filter(|&at| at <= now) else {
                continue;
            };
            match (c.held(), c.death(now)) {
                (true, Some(reason)) => {
                    dead.push((i, reason));
                    c.queued = None;
                }
                (true, None) => {
                    c.queued = Some(c.deadlines().idle_expires_at);
                    report.requeued += 1;
                    debug_assert!(c.queued > Some(at));
                }
                (false, _) => c.queued = None,
            }
        }
        report.removed = dead.len();
        self.remove(dead, false, now);
        let cutoff = now.saturating_sub(self.limits.retention);
        self.graves.evict_older_than(cutoff);
        self.thread_graves.evict_older_than(cutoff);
        if std::mem::take(&mut self.reclaim_pending) {
            let dead: Vec<(usize, DeathReason)> = self
                .held
                .iter()
                .filter_map(|&i| self.creds[i].death(now).map(|reason| (i, reason)))
                .collect();
            report.reclaimed = dead.len();
            self.remove(dead, false, now);
        }
        report
    }
}

// ---------------------------------------------------------------------------
// Actions
// ---------------------------------------------------------------------------

/// Why the clock moved as it did (shown in failure messages).
#[derive(Debug, Clone, Copy)]
enum Jump {
    Zero,
    OneMilli,
    Millis,
    /// To `offset` ms from credential `credential`'s idle deadline (the
    /// instant it dies unless used): -1, 0 or +1.
    NearDeadline {
        credential: usize,
        offset: i64,
    },
    Seconds,
    Minutes,
    Hours,
    Days,
    Months,
}

/// One Mint's arguments.
#[derive(Debug, Clone)]
struct MintCall {
    actor: usize,
    thread: usize,
    instance: usize,
    replace: bool,
    kind: Option<&'static str>,
    scopes: Vec<&'static str>,
    labels: Vec<(&'static str, &'static str)>,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
}

/// One step of a run. Credentials are named by their index in the model.
///
/// To add an action: a variant here, its draw in [`Run::draw`], and an arm
/// in [`Run::apply`] that calls the store and compares its answer with the
/// model's. The planned `Restart { crash: bool }` goes the same way, with
/// [`restart`] as its store side (see there for what the model must then
/// carry over).
#[derive(Debug, Clone)]
enum Action {
    Advance {
        by: Millis,
        why: Jump,
    },
    Mint(MintCall),
    Resolve {
        credential: usize,
        scope: Option<&'static str>,
    },
    TouchCredential {
        actor: usize,
        credential: usize,
    },
    TouchThread {
        actor: usize,
        thread: usize,
    },
    RevokeCredential {
        actor: usize,
        credential: usize,
    },
    RevokeThread {
        actor: usize,
        thread: usize,
    },
    RevokeAll {
        actor: usize,
        instance: Option<usize>,
    },
    Sweep,
}

/// The extension point for a later `Action::Restart { crash: bool }`: the
/// one place a run would hand over its store and get back the store
/// reopened from its journal (`crash`: without a clean shutdown). Not
/// called, and no action draws it: [`Store`] has no journal to reopen from
/// yet, and an action that restarted nothing would check nothing.
///
/// Whoever adds it replaces the body with the reopening, adds the variant,
/// its draw and its arm in [`Run::apply`], and gives [`Model`] what a
/// restart keeps: held records with their deadlines, RevokeAll's
/// revocations, tombstones and their ages, and the clock's newest time;
/// what a crash may lose (renewals not yet checkpointed, say) is for that
/// design to specify and for the model to accept as a range.
#[expect(
    dead_code,
    reason = "the extension point for Action::Restart; the store cannot reopen yet"
)]
fn restart(store: Store, clock: &FakeClock, crash: bool) -> Store {
    let _ = (store, clock, crash);
    unimplemented!("the store has no journal to reopen from yet")
}

// ---------------------------------------------------------------------------
// Configurations
// ---------------------------------------------------------------------------

/// One configuration a run drives.
struct Case {
    name: &'static str,
    config: StoreConfig,
    quota: Option<u64>,
    seeds: u64,
    steps: usize,
    /// Whether every limit (thread, quota, credentials, bytes) must refuse
    /// some Mint over the case's seeds.
    limits_reached: bool,
    /// Whether sweeps must overflow the tombstone capacity (so that the
    /// answers the model is unsure of are exercised).
    tombstones_overflow: bool,
}

/// A small deterministic generator (xorshift64), so a failure repeats from
/// its seed.
struct Rng(u64);

impl Rng {
    /// The generator for one seed of one case: the case's name is mixed
    /// in, so the cases do not replay one sequence of calls.
    fn for_case(name: &str, seed: u64) -> Self {
        let mixed = name.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
        });
        Rng(mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 bits (xorshift64).
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A number in `lo..=hi`.
    fn within(&mut self, lo: Millis, hi: Millis) -> Millis {
        lo + self.next() % (hi - lo + 1)
    }

    /// True once in `n` draws.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

// ---------------------------------------------------------------------------
// The runner
// ---------------------------------------------------------------------------

/// What a case's runs exercised, counted from the store's answers, so a
/// generator that stops reaching deadlines, boundaries or causes fails the
/// case instead of passing it vacuously.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    /// Live answers from Resolve and Touch.
    live: u32,
    /// Live answers one millisecond before the idle deadline.
    live_at_last_milli: u32,
    /// Deaths by time reported at the deadline's very millisecond.
    dead_at_deadline: u32,
    idle_deaths: u32,
    expiries: u32,
    /// Deaths by each cause, in [`CAUSES`] order.
    revoked: [u32; 6],
    scope_refusals: u32,
    /// Removed credentials answered as unknown.
    forgotten: u32,
    /// Answers accepted only because a sweep's batch of tombstones was
    /// partly kept.
    unsure: u32,
    /// Touch-by-thread failures answered from a thread tombstone.
    thread_tombstones_read: u32,
    swept: u32,
    reclaimed: u32,
    requeued: u32,
}

/// Every revocation cause, in [`Coverage::revoked`] order.
const CAUSES: [RevocationCause; 6] = [
    RevocationCause::Thread,
    RevocationCause::ProviderInstance,
    RevocationCause::Caller,
    RevocationCause::All,
    RevocationCause::Credential,
    RevocationCause::Replaced,
];

impl Coverage {
    /// Sums one run's counts into a case's.
    fn add(&mut self, other: &Coverage) {
        self.live += other.live;
        self.live_at_last_milli += other.live_at_last_milli;
        self.dead_at_deadline += other.dead_at_deadline;
        self.idle_deaths += other.idle_deaths;
        self.expiries += other.expiries;
        for (a, b) in self.revoked.iter_mut().zip(other.revoked) {
            *a += b;
        }
        self.scope_refusals += other.scope_refusals;
        self.forgotten += other.forgotten;
        self.unsure += other.unsure;
        self.thread_tombstones_read += other.thread_tombstones_read;
        self.swept += other.swept;
        self.reclaimed += other.reclaimed;
        self.requeued += other.requeued;
    }

    /// Counts one reported death.
    fn death(&mut self, reason: DeathReason) {
        match reason {
            DeathReason::IdleTimeout => self.idle_deaths += 1,
            DeathReason::Expired => self.expiries += 1,
            DeathReason::Revoked(cause) => {
                let i = CAUSES
                    .iter()
                    .position(|&c| c == cause)
                    .expect("every cause");
                self.revoked[i] += 1;
            }
        }
    }
}

/// One run: a store, its clock, the model, and the generator.
struct Run<'a> {
    case: &'a Case,
    seed: u64,
    store: Store,
    clock: FakeClock,
    model: Model,
    rng: Rng,
    /// The credential the latest deadline jump aimed at, or the latest
    /// scope refusal named: the next calls pick it often, so that a
    /// renewal that should not have happened (or should have) shows.
    focus: Option<usize>,
    /// Mints refused by each limit: thread, quota, credentials, bytes.
    refused: [u32; 4],
    coverage: Coverage,
    context: String,
}

impl<'a> Run<'a> {
    /// A fresh store and model for one seed of `case`.
    fn new(case: &'a Case, seed: u64) -> Self {
        let clock = FakeClock::new(START);
        Run {
            case,
            seed,
            store: Store::new(case.config.clone(), Arc::new(clock.clone())),
            clock,
            model: Model::new(&case.config, case.quota, case.steps),
            rng: Rng::for_case(case.name, seed),
            focus: None,
            refused: [0; 4],
            coverage: Coverage::default(),
            context: String::new(),
        }
    }

    /// The store's clock (the run's [`FakeClock`]).
    fn now(&self) -> Millis {
        self.store.now()
    }

    /// A credential's model state, for failure messages.
    fn describe(&self, cred: usize) -> String {
        self.model.creds[cred].describe(self.now())
    }

    /// The held credentials `pick` selects, one a line, for failure
    /// messages about counts.
    fn describe_held(&self, pick: impl Fn(&Cred) -> bool) -> String {
        let now = self.now();
        self.model
            .held()
            .filter(|c| pick(c))
            .map(|c| format!("\n  {}", c.describe(now)))
            .collect()
    }

    /// Counts a held credential's answer at `now` before any renewal: live
    /// (and whether at the last millisecond before its idle deadline), or
    /// dead by time at the deadline's very millisecond.
    fn count_boundary(&mut self, cred: usize, now: Millis) {
        let c = &self.model.creds[cred];
        let died_at = c.deadlines().idle_expires_at;
        match c.death(now) {
            None => {
                self.coverage.live += 1;
                self.coverage.live_at_last_milli += u32::from(died_at == now + 1);
            }
            Some(DeathReason::IdleTimeout | DeathReason::Expired) => {
                self.coverage.dead_at_deadline += u32::from(died_at == now);
            }
            Some(DeathReason::Revoked(_)) => {}
        }
    }

    // -- drawing ------------------------------------------------------------

    /// The credential a call names: the focus half the time, else mostly
    /// a held one, sometimes a recently removed one, rarely any ever
    /// minted (long forgotten ones must answer unknown).
    fn pick_credential(&mut self) -> Option<usize> {
        if self.model.creds.is_empty() {
            return None;
        }
        if let Some(focus) = self.focus.filter(|_| self.rng.one_in(2)) {
            return Some(focus);
        }
        let (held, removed) = (&self.model.held, &self.model.removed);
        Some(match self.rng.below(8) {
            0..=4 if !held.is_empty() => held[self.rng.below(held.len())],
            5 | 6 if !removed.is_empty() => removed[self.rng.below(removed.len())],
            _ => self.rng.below(self.model.creds.len()),
        })
    }

    /// Mostly a thread some held credential is on, else any.
    fn pick_thread(&mut self) -> usize {
        if !self.model.held.is_empty() && self.rng.one_in(2) {
            let i = self.model.held[self.rng.below(self.model.held.len())];
            return self.model.creds[i].thread;
        }
        self.rng.below(THREADS)
    }

    /// A time jump: nothing, a millisecond, a few; a quarter one
    /// millisecond before, at or after a live credential's idle deadline;
    /// else seconds, minutes, hours, days or months, rarer the longer.
    fn draw_advance(&mut self) -> Action {
        let now = self.now();
        let rng = &mut self.rng;
        let (by, why) = match rng.below(100) {
            0..=19 => (0, Jump::Zero),
            20..=34 => (1, Jump::OneMilli),
            35..=49 => (rng.within(2, 50), Jump::Millis),
            50..=74 => {
                // The focus, else mostly the earliest idle deadline (which
                // ends one credential, not every one before a random one).
                let creds = &self.model.creds;
                let live: Vec<usize> = self
                    .model
                    .held
                    .iter()
                    .copied()
                    .filter(|&i| creds[i].live(now))
                    .collect();
                let target = self
                    .focus
                    .filter(|i| live.contains(i) && rng.one_in(2))
                    .or_else(|| match rng.below(4) {
                        _ if live.is_empty() => None,
                        0 => Some(live[rng.below(live.len())]),
                        _ => live
                            .iter()
                            .copied()
                            .min_by_key(|&i| creds[i].deadlines().idle_expires_at),
                    });
                match target {
                    Some(credential) => {
                        let offset = rng.below(3) as i64 - 1;
                        let deadline = self.model.creds[credential].deadlines().idle_expires_at;
                        let at = deadline.saturating_add_signed(offset);
                        self.focus = Some(credential);
                        (
                            at.saturating_sub(now),
                            Jump::NearDeadline { credential, offset },
                        )
                    }
                    None => (1, Jump::OneMilli),
                }
            }
            75..=86 => (rng.within(1, 59) * SECOND, Jump::Seconds),
            87..=92 => (rng.within(1, 59) * MINUTE, Jump::Minutes),
            93..=96 => (rng.within(1, 23) * HOUR, Jump::Hours),
            97..=98 => (rng.within(1, 29) * DAY, Jump::Days),
            _ => (rng.within(1, 6) * 30 * DAY, Jump::Months),
        };
        Action::Advance { by, why }
    }

    /// A Mint: any caller, mostly its own instances, a third replacing,
    /// with a prefix of the scopes and labels, sometimes a kind, and one in
    /// eight with an idle or max lifetime override (0, 1 ms, a few ms, a
    /// third of the store's, or twice it, to be clamped).
    fn draw_mint(&mut self) -> Action {
        let rng = &mut self.rng;
        let actor = rng.below(ACTORS.len());
        // Mostly the actor's own two instances, sometimes anyone's.
        let instance = if rng.below(5) > 0 {
            2 * actor + rng.below(2)
        } else {
            rng.below(INSTANCES)
        };
        let idle = millis(self.case.config.idle_timeout);
        let max = millis(self.case.config.max_lifetime);
        let overrides = |rng: &mut Rng, store: Millis| {
            rng.one_in(8).then(|| {
                Duration::from_millis(match rng.below(5) {
                    0 => 0,
                    1 => 1,
                    2 => rng.within(2, 40),
                    3 => store / 3,
                    _ => store.saturating_mul(2),
                })
            })
        };
        Action::Mint(MintCall {
            actor,
            thread: self.pick_thread_for_mint(instance),
            instance,
            replace: self.rng.one_in(3),
            kind: KINDS[self.rng.below(KINDS.len())],
            scopes: SCOPES[..self.rng.below(SCOPES.len())].to_vec(),
            labels: LABELS[..self.rng.below(LABELS.len())].to_vec(),
            idle_timeout: overrides(&mut self.rng, idle),
            max_lifetime: overrides(&mut self.rng, max),
        })
    }

    /// Often a thread that holds a credential of the same instance (a
    /// rotation, which a replacement then revokes), else any.
    fn pick_thread_for_mint(&mut self, instance: usize) -> usize {
        let rotations: Vec<usize> = self
            .model
            .held()
            .filter(|c| c.instance == instance)
            .map(|c| c.thread)
            .collect();
        if !rotations.is_empty() && self.rng.below(5) < 2 {
            return rotations[self.rng.below(rotations.len())];
        }
        self.rng.below(THREADS)
    }

    /// The next step: about a fifth time jumps, over a quarter Mints, the
    /// rest Resolve, Touch, the revocations and sweeps.
    fn draw(&mut self) -> Action {
        let roll = self.rng.below(100);
        let actor = self.rng.below(ACTORS.len());
        match roll {
            0..=21 => self.draw_advance(),
            22..=49 => self.draw_mint(),
            50..=65 => match self.pick_credential() {
                Some(credential) => {
                    let scope = self
                        .rng
                        .one_in(3)
                        .then(|| SCOPES[self.rng.below(SCOPES.len())]);
                    Action::Resolve { credential, scope }
                }
                None => self.draw_mint(),
            },
            66..=72 => match self.pick_credential() {
                Some(credential) => Action::TouchCredential { actor, credential },
                None => self.draw_mint(),
            },
            73..=80 => Action::TouchThread {
                actor,
                thread: self.pick_thread(),
            },
            81..=86 => match self.pick_credential() {
                Some(credential) => Action::RevokeCredential { actor, credential },
                None => self.draw_mint(),
            },
            87..=91 => Action::RevokeThread {
                actor,
                thread: self.pick_thread(),
            },
            92..=94 => Action::RevokeAll {
                actor,
                instance: self
                    .rng
                    .below(3)
                    .checked_sub(1)
                    .map(|_| self.rng.below(INSTANCES)),
            },
            _ => Action::Sweep,
        }
    }

    // -- applying -----------------------------------------------------------

    /// Runs one step against the store and the model and compares them.
    fn apply(&mut self, action: &Action) {
        match action {
            Action::Advance { by, why } => {
                self.clock.advance(Duration::from_millis(*by));
                if let Jump::NearDeadline { credential, offset } = *why {
                    // The draw aims at an instant still ahead, or stays.
                    let deadline = self.model.creds[credential].deadlines().idle_expires_at;
                    let aimed = deadline.saturating_add_signed(offset);
                    assert_eq!(self.now(), aimed.max(self.now() - by), "{}", self.context);
                }
            }
            Action::Mint(call) => self.mint(call),
            Action::Resolve { credential, scope } => self.resolve(*credential, *scope),
            Action::TouchCredential { actor, credential } => {
                self.touch_credential(*actor, *credential)
            }
            Action::TouchThread { actor, thread } => self.touch_thread(*actor, *thread),
            Action::RevokeCredential { actor, credential } => {
                self.revoke_credential(*actor, *credential)
            }
            Action::RevokeThread { actor, thread } => self.revoke_thread(*actor, *thread),
            Action::RevokeAll { actor, instance } => self.revoke_all(*actor, *instance),
            Action::Sweep => self.sweep(),
        }
    }

    /// Mint: the refusal is the model's, in its order (catches a quota that
    /// ignores the replacement, proven; a limit checked before the
    /// replacement it should count after, a thread limit counting dead
    /// records, a quota counting RevokeAll's victims); the replaced count
    /// and the new credential's deadlines are the model's (catches
    /// overrides not clamped to 1 ms and a missing absolute-lifetime cap,
    /// both proven; overrides not clamped to the store's limits).
    fn mint(&mut self, call: &MintCall) {
        let now = self.now();
        let ctx = &self.context;
        let digest = TokenDigest::of(&format!(
            "{} {} {}",
            self.case.name,
            self.seed,
            self.model.creds.len()
        ));
        let (thread_id, instance_id) = (thread_name(call.thread), instance_name(call.instance));
        let scopes: Scopes = call.scopes.iter().map(|s| Box::from(*s)).collect();
        let labels: Labels = call
            .labels
            .iter()
            .map(|(k, v)| (Box::from(*k), Box::from(*v)))
            .collect();
        let bytes = (thread_id.len()
            + instance_id.len()
            + call.kind.map_or(0, str::len)
            + call.scopes.iter().map(|s| s.len()).sum::<usize>()
            + call
                .labels
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()) as u64;
        let minted = self.store.mint(
            digest,
            NewCredential {
                thread_id: &thread_id,
                provider_instance_id: &instance_id,
                provider_kind: call.kind,
                idle_timeout: call.idle_timeout,
                max_lifetime: call.max_lifetime,
                replace_previous: call.replace,
                scopes,
                labels,
                minted_by: ACTORS[call.actor],
                reach: reach(call.actor),
                owner_quota: self.model.quota(call.actor),
            },
        );
        let plan = self.model.check_mint(call, bytes, now);
        let plan = match (plan, minted) {
            (Err(want), Err(got)) => {
                assert_eq!(
                    format!("{got:?}"),
                    format!("{want:?}"),
                    "{ctx}: Mint refused"
                );
                if let Some(limit) = match want {
                    Rejection::ThreadLimit { .. } => Some(0),
                    Rejection::OwnerQuota { .. } => Some(1),
                    Rejection::StoreBudget {
                        budget: Budget::Credentials,
                        ..
                    } => Some(2),
                    Rejection::StoreBudget { .. } => Some(3),
                    _ => None,
                } {
                    self.refused[limit] += 1;
                }
                return;
            }
            (Err(want), Ok(got)) => panic!("{ctx}: minted {got:?}, the model says {want:?}"),
            (Ok(_), Err(got)) => panic!("{ctx}: Mint refused with {got:?}, the model mints"),
            (Ok(plan), Ok(minted)) => (plan, minted),
        };
        let (plan, minted) = plan;
        let batch: Vec<(usize, DeathReason)> = plan
            .replaced
            .iter()
            .map(|&i| {
                let death = self.model.creds[i].death(now);
                (
                    i,
                    death.unwrap_or(DeathReason::Revoked(RevocationCause::Replaced)),
                )
            })
            .collect();
        let live = batch
            .iter()
            .filter(|(_, r)| *r == DeathReason::Revoked(RevocationCause::Replaced))
            .count() as u64;
        self.model.remove(batch, true, now);
        assert_eq!(minted.replaced, live, "{ctx}: live credentials replaced");
        let clamp = |requested: Option<Duration>, limit: Millis| {
            requested.map_or(limit, |d| millis(d).min(limit).max(1))
        };
        let cred = Cred {
            digest,
            id: minted.credential_id,
            thread: call.thread,
            instance: call.instance,
            owner: call.actor,
            kind: call.kind,
            scopes: call.scopes.clone(),
            labels: call.labels.clone(),
            idle_timeout: clamp(call.idle_timeout, self.model.limits.idle_timeout),
            max_lifetime: clamp(call.max_lifetime, self.model.limits.max_lifetime),
            absolute_lifetime: self.model.limits.absolute_lifetime,
            created_at: now,
            last_used: now,
            revoked_all: None,
            removed: None,
            removed_at: 0,
            grave: None,
            queued: None,
            bytes,
        };
        let deadlines = cred.deadlines();
        assert_eq!(minted.deadlines, deadlines, "{ctx}: Mint's deadlines");
        self.model.held.push(self.model.creds.len());
        self.model.creds.push(Cred {
            queued: Some(deadlines.idle_expires_at),
            ..cred
        });
    }

    /// A removed credential's answer: remembered (its tombstone) or
    /// forgotten, as the model's tombstones say; `store_remembers` is what
    /// the store's answer shows. Catches a tombstone kept past its
    /// retention or dropped before it (`at > cutoff` written `at >=
    /// cutoff`), a capacity that drops the newest instead of the oldest,
    /// and a credential-id index left behind by an evicted tombstone.
    fn recall(&mut self, cred: usize, store_remembers: bool, answer: &dyn Debug) {
        let c = &self.model.creds[cred];
        let remembered = self.model.graves.remembered(c.grave, cred);
        match (remembered, store_remembers) {
            (Remembered::Yes, true) => {}
            (Remembered::No, false) => self.coverage.forgotten += 1,
            (Remembered::Maybe, true) => self.coverage.unsure += 1,
            (Remembered::Maybe, false) => {
                self.coverage.unsure += 1;
                self.coverage.forgotten += 1;
                let grave = c.grave;
                if let Err(e) = self.model.graves.forgotten(grave, cred) {
                    panic!("{}: {e}; {}", self.context, self.describe(cred));
                }
            }
            (remembered, _) => panic!(
                "{}: got {answer:?}, the model's tombstone: {remembered:?}; {}",
                self.context,
                self.describe(cred)
            ),
        }
    }

    /// Checks a dead credential's report against the model's credential
    /// and reason. Catches a wrong reason (`>=` written `>` in `death`; a
    /// revocation at the deadline's instant winning the tie; `IdleTimeout`
    /// for an idle deadline equal to `expires_at`) and a wrong cause
    /// (RevokeThread recorded as `credential`; `ProviderInstance` and
    /// `Caller` swapped), all proven.
    fn check_dead(&mut self, dead: &DeadCredential, cred: usize, reason: DeathReason) {
        self.coverage.death(reason);
        if self.focus == Some(cred) {
            // Seen dead: nothing more to learn from it.
            self.focus = None;
        }
        let c = &self.model.creds[cred];
        assert_eq!(
            (
                dead.reason,
                dead.credential_id,
                &*dead.thread_id,
                &*dead.minted_by
            ),
            (
                reason,
                c.id,
                thread_name(c.thread).as_str(),
                ACTORS[c.owner]
            ),
            "{}: the dead credential's report; {}",
            self.context,
            self.describe(cred)
        );
    }

    /// Resolve: a live credential answers everything it was minted with
    /// and the deadlines of this very use; a dead one its death's reason;
    /// a missing scope is refused without renewal (the credential's later
    /// death shows it: the refusal makes it the focus, which the next
    /// deadline jump aims at). Catches a broken sliding renewal
    /// (`expires_at` counted from mint, a renewal that skips the next
    /// millisecond), a renewal on a scope refusal, and the boundary off by
    /// one, all proven.
    fn resolve(&mut self, cred: usize, scope: Option<&str>) {
        let now = self.now();
        let got = self.store.resolve(&self.model.creds[cred].digest, scope);
        if let Some(removed) = self.model.creds[cred].removed {
            let remembers = matches!(got, Err(Rejection::Dead(_)));
            self.recall(cred, remembers, &got);
            match &got {
                Err(Rejection::Dead(dead)) => self.check_dead(dead, cred, removed),
                Err(Rejection::Unknown) => {}
                other => panic!("{}: got {other:?}; {}", self.context, self.describe(cred)),
            }
            return;
        }
        self.count_boundary(cred, now);
        let c = &self.model.creds[cred];
        match (c.death(now), scope) {
            (Some(reason), _) => match &got {
                Err(Rejection::Dead(dead)) => self.check_dead(dead, cred, reason),
                other => panic!(
                    "{}: got {other:?}, the model says dead ({reason:?}); {}",
                    self.context,
                    self.describe(cred)
                ),
            },
            (None, Some(scope)) if !c.scopes.contains(&scope) => {
                match &got {
                    Err(Rejection::ScopeMissing {
                        credential_id,
                        thread_id,
                        scope: missing,
                    }) => assert_eq!(
                        (credential_id, &**thread_id, &**missing),
                        (&c.id, thread_name(c.thread).as_str(), scope),
                        "{}: the scope refusal",
                        self.context
                    ),
                    other => panic!(
                        "{}: got {other:?}, the model refuses scope {scope}; {}",
                        self.context,
                        self.describe(cred)
                    ),
                }
                self.focus = Some(cred);
                self.coverage.scope_refusals += 1;
            }
            (None, _) => {
                let c = &mut self.model.creds[cred];
                c.last_used = c.last_used.max(now);
                let want = c.resolved();
                match got {
                    Ok(got) => assert_eq!(got, want, "{}: Resolve's answer", self.context),
                    Err(e) => panic!(
                        "{}: got {e:?}, the model says live; {}",
                        self.context,
                        self.describe(cred)
                    ),
                }
            }
        }
    }

    /// Touch by credential id: renews exactly as Resolve does, refuses a
    /// credential out of reach (live, dead or remembered only by its
    /// tombstone) as not owned, and a dead one with Resolve's reason.
    /// Catches Touch renewing a dead credential (revival), Touch by id
    /// crossing reach, and the same renewal faults as Resolve.
    fn touch_credential(&mut self, actor: usize, cred: usize) {
        let now = self.now();
        let got = self
            .store
            .touch_credential(&self.model.creds[cred].id, reach(actor));
        let within = self.model.creds[cred].within(actor);
        if let Some(removed) = self.model.creds[cred].removed {
            let remembers = matches!(got, Err(Rejection::Dead(_) | Rejection::NotOwned { .. }));
            self.recall(cred, remembers, &got);
            let id = self.model.creds[cred].id;
            match (&got, within) {
                (Err(Rejection::Dead(dead)), true) => self.check_dead(dead, cred, removed),
                (Err(Rejection::NotOwned { credential_id }), false) => {
                    assert_eq!(*credential_id, Some(id), "{}", self.context)
                }
                (Err(Rejection::Unknown), _) => {}
                (other, _) => panic!("{}: got {other:?}; {}", self.context, self.describe(cred)),
            }
            return;
        }
        self.count_boundary(cred, now);
        let c = &self.model.creds[cred];
        if !within {
            match &got {
                Err(Rejection::NotOwned { credential_id }) => {
                    assert_eq!(*credential_id, Some(c.id), "{}", self.context)
                }
                other => panic!("{}: got {other:?}, out of reach", self.context),
            }
            return;
        }
        match (c.death(now), got) {
            (Some(reason), Err(Rejection::Dead(dead))) => self.check_dead(&dead, cred, reason),
            (None, Ok(touched)) => {
                let c = &mut self.model.creds[cred];
                c.last_used = c.last_used.max(now);
                let want = Touched {
                    credential_id: c.id,
                    deadlines: c.deadlines(),
                };
                assert_eq!(touched, want, "{}: Touch's answer", self.context);
            }
            (death, got) => panic!(
                "{}: got {got:?}, the model says {death:?}; {}",
                self.context,
                self.describe(cred)
            ),
        }
    }

    /// Touch by thread: renews every live credential of the thread within
    /// reach and lists the oldest `touch_reply_limit`, each with the
    /// deadlines of this renewal; fails only when none is live, with
    /// not-owned when the thread's live credentials are all out of reach,
    /// else with the newest death within reach (a held dead record's or
    /// the thread tombstone's, the newer by mint time), else unknown.
    /// Catches a Touch renewing another caller's credentials, a listing of
    /// one more than the limit, a thread tombstone winning a tie over a
    /// held record (all proven), a listing that is not oldest first,
    /// another caller's death leaking across reach.
    fn touch_thread(&mut self, actor: usize, thread: usize) {
        let now = self.now();
        let got = self.store.touch_thread(&thread_name(thread), reach(actor));
        let ctx = &self.context;
        let on_thread = self.model.on_thread(thread);
        let mut listed = Vec::new();
        let mut total = 0u64;
        let mut out_of_reach_live = false;
        let mut newest_dead: Option<(usize, DeathReason)> = None;
        for &i in &on_thread {
            let c = &mut self.model.creds[i];
            match (c.within(actor), c.death(now)) {
                (false, death) => out_of_reach_live |= death.is_none(),
                (true, Some(reason)) => newest_dead = Some((i, reason)),
                (true, None) => {
                    c.last_used = c.last_used.max(now);
                    total += 1;
                    if listed.len() < self.model.limits.touch_reply_limit {
                        listed.push(Touched {
                            credential_id: c.id,
                            deadlines: c.deadlines(),
                        });
                    }
                }
            }
        }
        if total > 0 {
            match got {
                Ok(touched) => {
                    assert_eq!(touched.total, total, "{ctx}: renewed");
                    assert_eq!(touched.touched, listed, "{ctx}: listed");
                }
                Err(e) => panic!("{ctx}: got {e:?}, the model renews {total}"),
            }
            return;
        }
        if out_of_reach_live {
            assert!(
                matches!(
                    got,
                    Err(Rejection::NotOwned {
                        credential_id: None
                    })
                ),
                "{ctx}: got {got:?}, the thread's live credentials are out of reach"
            );
            return;
        }
        let held_dead = newest_dead.map(|(i, reason)| (self.model.creds[i].created_at, i, reason));
        // Which answers the model accepts: (credential, reason), or None
        // for unknown.
        let mut accepted: Vec<Option<(usize, DeathReason)>> = Vec::new();
        let newer_than_held =
            |created_at: Millis| held_dead.is_none_or(|(held_at, _, _)| created_at > held_at);
        if self.model.thread_graves.exact {
            match self.model.thread_graves.newest(thread, actor) {
                Some((created_at, candidates)) if newer_than_held(created_at) => {
                    for i in candidates {
                        accepted.push(Some((i, self.model.creds[i].removed.expect("removed"))));
                    }
                }
                _ => accepted.push(held_dead.map(|(_, i, reason)| (i, reason))),
            }
        } else {
            // Which thread tombstones survived a capacity is unknown: any
            // removed credential of the thread within reach, recorded after
            // the last age cutoff and newer than the held dead one, or the
            // held dead one, or (without one) unknown.
            accepted.push(held_dead.map(|(_, i, reason)| (i, reason)));
            for (i, c) in self.model.creds.iter().enumerate() {
                let Some(reason) = c.removed else { continue };
                if c.thread == thread
                    && c.within(actor)
                    && c.removed_at > self.model.thread_graves.cutoff
                    && newer_than_held(c.created_at)
                {
                    accepted.push(Some((i, reason)));
                }
            }
        }
        let answered = match &got {
            Err(Rejection::Dead(dead)) => self
                .model
                .creds
                .iter()
                .position(|c| c.id == dead.credential_id)
                .map(|i| (i, dead.reason)),
            Err(Rejection::Unknown) => None,
            other => panic!("{ctx}: got {other:?}, the model accepts {accepted:?}"),
        };
        assert!(
            accepted.contains(&answered),
            "{ctx}: got {got:?}, the model accepts {:?}",
            accepted
                .iter()
                .map(|a| a.map(|(i, r)| (self.model.creds[i].id, r)))
                .collect::<Vec<_>>()
        );
        if let (Some((i, reason)), Err(Rejection::Dead(dead))) = (answered, &got) {
            self.coverage.thread_tombstones_read += u32::from(!self.model.creds[i].held());
            self.check_dead(dead, i, reason);
        }
    }

    /// RevokeCredential: revoked counts 1 only for a credential live at
    /// the call (catches a revocation counting a record past its deadline,
    /// or reviving it with the wrong reason: a dead record keeps its own);
    /// reports the thread while the credential is known, the instance
    /// while its record is held; refuses, changing nothing, what is out of
    /// reach.
    fn revoke_credential(&mut self, actor: usize, cred: usize) {
        let now = self.now();
        let got = self
            .store
            .revoke_credential(&self.model.creds[cred].id, reach(actor));
        let within = self.model.creds[cred].within(actor);
        let ctx = self.context.clone();
        if !self.model.creds[cred].held() {
            let remembers = match &got {
                Ok(revocation) => revocation.thread_id.is_some(),
                Err(Rejection::NotOwned { .. }) => true,
                Err(_) => false,
            };
            self.recall(cred, remembers, &got);
            let c = &self.model.creds[cred];
            let want = match (remembers, within) {
                (true, false) => Err(format!(
                    "{:?}",
                    Rejection::NotOwned {
                        credential_id: Some(c.id)
                    }
                )),
                (true, true) => Ok(CredentialRevocation {
                    revoked: 0,
                    thread_id: Some(thread_name(c.thread).into()),
                    provider_instance_id: None,
                }),
                (false, _) => Ok(CredentialRevocation::default()),
            };
            assert_eq!(got.map_err(|e| format!("{e:?}")), want, "{ctx}");
            return;
        }
        let c = &self.model.creds[cred];
        if !within {
            assert!(
                matches!(&got, Err(Rejection::NotOwned { credential_id: Some(id) }) if *id == c.id),
                "{ctx}: got {got:?}, out of reach"
            );
            return;
        }
        let death = c.death(now);
        let want = CredentialRevocation {
            revoked: u64::from(death.is_none()),
            thread_id: Some(thread_name(c.thread).into()),
            provider_instance_id: Some(instance_name(c.instance).into()),
        };
        assert_eq!(got.ok(), Some(want), "{ctx}; {}", self.describe(cred));
        let reason = death.unwrap_or(DeathReason::Revoked(RevocationCause::Credential));
        self.model.remove(vec![(cred, reason)], true, now);
    }

    /// RevokeThread: revokes (and removes) every record of the thread
    /// within reach, oldest first; counts the live ones it revoked and the
    /// live ones out of reach it left. Catches a cause other than `thread`
    /// in the tombstones and dead records out of reach counted as left
    /// alone (both proven), dead records counted as revoked, another
    /// caller's credentials revoked.
    fn revoke_thread(&mut self, actor: usize, thread: usize) {
        let now = self.now();
        let got = self.store.revoke_thread(&thread_name(thread), reach(actor));
        let mut want = ThreadRevocation::default();
        let mut batch = Vec::new();
        for i in self.model.on_thread(thread) {
            let c = &self.model.creds[i];
            let death = c.death(now);
            if c.within(actor) {
                want.revoked += u64::from(death.is_none());
                batch.push((
                    i,
                    death.unwrap_or(DeathReason::Revoked(RevocationCause::Thread)),
                ));
            } else {
                want.not_owned += u64::from(death.is_none());
            }
        }
        assert_eq!(
            got,
            want,
            "{}: the thread's credentials:{}",
            self.context,
            self.describe_held(|c| c.thread == thread)
        );
        self.model.remove(batch, true, now);
    }

    /// RevokeAll: counts every record it ends (held and not ended by an
    /// earlier RevokeAll; a record past its deadline but not yet swept is
    /// counted, as the store's constant-time counts do), and each keeps
    /// the cause of the first RevokeAll that reached it. Catches a scope
    /// revoking beyond its target (one caller's RevokeAll ending another's
    /// credentials), a later RevokeAll overwriting the first one's cause,
    /// a stale count after an enclosing revocation.
    fn revoke_all(&mut self, actor: usize, instance: Option<usize>) {
        let now = self.now();
        let instance_id = instance.map(instance_name);
        let target = match (reach(actor), instance_id.as_deref()) {
            (Reach::All, None) => RevokeAllTarget::Everything,
            (Reach::All, Some(id)) => RevokeAllTarget::Instance(id),
            (Reach::MintedBy(name), None) => RevokeAllTarget::MintedBy(name),
            (Reach::MintedBy(name), Some(id)) => RevokeAllTarget::MintedByForInstance {
                minted_by: name,
                provider_instance_id: id,
            },
        };
        let got = self.store.revoke_all(target);
        let reached = self.describe_held(|c| {
            c.counted() && c.within(actor) && instance.is_none_or(|x| c.instance == x)
        });
        let want = self.model.revoke_all(actor, instance, now);
        assert_eq!(
            got, want,
            "{}: revoked; the model's:{reached}",
            self.context
        );
    }

    /// A sweep removes exactly what the model says is due and dead (and,
    /// after a RevokeAll, everything dead), re-queues what is due and live,
    /// and forgets tombstones past their retention. Catches a sweeper that
    /// drops a live record's queue entry (proven), re-queues at a stale
    /// deadline, removes a live record, or skips the reclaim pass.
    fn sweep(&mut self) {
        let now = self.now();
        let got = self.store.sweep();
        let before = self.describe_held(|c| c.queued.is_some_and(|at| at <= now) || !c.live(now));
        let want = self.model.sweep(now);
        assert_eq!(
            got, want,
            "{}: the sweep; due or dead before it:{before}",
            self.context
        );
        self.coverage.swept += got.removed as u32;
        self.coverage.reclaimed += got.reclaimed as u32;
        self.coverage.requeued += got.requeued as u32;
    }

    /// What the store holds after every step: its records, the budgets'
    /// counts of them, the queued deadlines, the tombstones (by digest,
    /// by id, by thread). Catches tombstone retention and capacity off by
    /// one, by digest and by thread (proven), a record left behind or
    /// removed early, a budget not given back, a queue entry lost or
    /// duplicated, an id index entry outliving its tombstone.
    fn check_counts(&self) {
        let ctx = &self.context;
        let model = &self.model;
        assert_eq!(
            self.store.record_count(),
            model.held.len(),
            "{ctx}: records held; the model's:{}",
            self.describe_held(|_| true)
        );
        let bytes: u64 = model.held().map(|c| c.bytes).sum();
        assert_eq!(
            self.store.budget_used(),
            (model.held.len() as u64, bytes),
            "{ctx}: budgets"
        );
        let queued = model.creds.iter().filter(|c| c.queued.is_some()).count();
        assert_eq!(
            self.store.queued_deadlines(),
            queued,
            "{ctx}: queued deadlines"
        );
        assert_eq!(
            self.store.tombstone_count(),
            model.graves.kept,
            "{ctx}: tombstones"
        );
        assert_eq!(
            self.store.indexed_credential_ids(),
            model.held.len() + model.graves.kept,
            "{ctx}: credential ids indexed"
        );
        let threads = self.store.thread_tombstone_count();
        if model.thread_graves.exact {
            assert_eq!(
                threads,
                model.thread_graves.by_thread.len(),
                "{ctx}: thread tombstones"
            );
        } else {
            assert!(
                threads <= model.thread_graves.capacity,
                "{ctx}: {threads} thread tombstones, capacity {}",
                model.thread_graves.capacity
            );
        }
    }

    /// Draws and checks the case's steps, then [`Run::finish`]; returns
    /// the Mints refused by each limit and what the steps reached.
    fn run(mut self) -> ([u32; 4], Coverage) {
        for step in 0..self.case.steps {
            let action = self.draw();
            self.context = format!(
                "{} seed {} step {step} at +{} ms: {action:?}",
                self.case.name,
                self.seed,
                self.now() - START
            );
            self.apply(&action);
            self.check_counts();
            if step % 64 == 0 {
                self.store.check_invariants().expect(&self.context);
            }
        }
        let coverage = self.coverage;
        self.finish();
        (self.refused, coverage)
    }

    /// At the end every credential answers as the model says; then, past
    /// every deadline, a sweep leaves no record and no queued deadline,
    /// and past the retention no tombstone.
    fn finish(&mut self) {
        self.store.check_invariants().expect("at the end");
        self.context = format!("{} seed {} at the end", self.case.name, self.seed);
        for cred in 0..self.model.creds.len() {
            self.resolve(cred, None);
        }
        let past_deadlines = self.model.limits.idle_timeout + 1;
        self.clock.advance(Duration::from_millis(past_deadlines));
        self.sweep();
        self.check_counts();
        assert_eq!(self.store.record_count(), 0, "{}", self.context);
        assert_eq!(self.store.queued_deadlines(), 0, "{}", self.context);
        self.clock
            .advance(Duration::from_millis(self.model.limits.retention + 1));
        self.sweep();
        self.check_counts();
        assert_eq!(self.store.tombstone_count(), 0, "{}", self.context);
        assert_eq!(self.store.thread_tombstone_count(), 0, "{}", self.context);
        for thread in 0..THREADS {
            self.touch_thread(ADMIN, thread);
        }
    }
}

/// Runs a case over its seeds; checks that the limits it should reach
/// refused some Mints.
fn run_case(case: Case) {
    let mut refused = [0u32; 4];
    let mut coverage = Coverage::default();
    for seed in 1..=case.seeds {
        let run = Run::new(&case, seed);
        let (run_refused, run_coverage) = run.run();
        for (total, n) in refused.iter_mut().zip(run_refused) {
            *total += n;
        }
        coverage.add(&run_coverage);
    }
    let c = &coverage;
    let reached = [
        ("live answers", c.live),
        ("live answers at the last millisecond", c.live_at_last_milli),
        ("deaths at the deadline's millisecond", c.dead_at_deadline),
        ("idle deaths", c.idle_deaths),
        ("expiries", c.expiries),
        ("scope refusals", c.scope_refusals),
        ("forgotten tombstones", c.forgotten),
        ("thread tombstones read", c.thread_tombstones_read),
        ("records swept", c.swept),
        ("records reclaimed", c.reclaimed),
        ("deadlines requeued", c.requeued),
    ]
    .into_iter()
    .chain(
        CAUSES
            .iter()
            .zip(c.revoked)
            .map(|(cause, n)| (cause.as_str(), n)),
    )
    .chain(
        case.tombstones_overflow
            .then_some(("partly kept tombstone batches read", c.unsure)),
    );
    for (what, n) in reached {
        assert!(
            n > 0,
            "{}: the runs never reached {what}: {coverage:?}",
            case.name
        );
    }
    if case.limits_reached {
        assert!(
            refused.iter().all(|&n| n > 0),
            "{}: every limit (thread, quota, credentials, bytes) refused some Mint: {refused:?}",
            case.name
        );
    }
}

/// The defaults: 30 minutes idle, 30 days max lifetime, no absolute
/// lifetime, tombstones for a day. Hour-to-month jumps end everything;
/// deadline jumps end one credential at a time.
#[test]
fn the_default_configuration_agrees_with_the_model() {
    run_case(Case {
        name: "default",
        config: StoreConfig::default(),
        quota: None,
        seeds: 10,
        steps: 6_000,
        limits_reached: false,
        tombstones_overflow: false,
    });
}

/// An absolute lifetime shorter than the max lifetime: credentials kept
/// in use die of expiry at mint time plus 45 s, their idle deadline capped
/// by it. Catches renewal past the absolute lifetime, and a death reason
/// that names the idle timeout for a capped deadline.
#[test]
fn an_absolute_lifetime_agrees_with_the_model() {
    run_case(Case {
        name: "absolute",
        config: StoreConfig {
            idle_timeout: Duration::from_secs(10),
            max_lifetime: Duration::from_secs(3_600),
            absolute_lifetime: Some(Duration::from_secs(45)),
            ..StoreConfig::default()
        },
        quota: None,
        seeds: 10,
        steps: 6_000,
        limits_reached: false,
        tombstones_overflow: false,
    });
}

/// 50 ms idle, 1 s max lifetime: millisecond jumps reach deadlines, and
/// renewal in the same millisecond as the latest use must change nothing.
#[test]
fn short_idle_timeouts_agree_with_the_model() {
    run_case(Case {
        name: "short",
        config: StoreConfig {
            idle_timeout: Duration::from_millis(50),
            max_lifetime: Duration::from_secs(1),
            ..StoreConfig::default()
        },
        quota: None,
        seeds: 10,
        steps: 6_000,
        limits_reached: false,
        tombstones_overflow: false,
    });
}

/// Three tombstones kept for 5 s: the capacity drops the oldest and the
/// retention the old, so dead credentials become unknown, and the counts
/// of tombstones must follow exactly.
#[test]
fn a_small_tombstone_capacity_agrees_with_the_model() {
    run_case(Case {
        name: "tombstones",
        config: StoreConfig {
            idle_timeout: Duration::from_secs(2),
            max_lifetime: Duration::from_secs(20),
            tombstone_retention: Duration::from_secs(5),
            tombstone_capacity: 3,
            ..StoreConfig::default()
        },
        quota: None,
        seeds: 10,
        steps: 6_000,
        limits_reached: false,
        tombstones_overflow: true,
    });
}

/// Small limits, which the random calls keep reaching: each refusal
/// (thread, quota, credentials, bytes) is the model's, in its order, and a
/// refused Mint changes nothing the model can see (but a full thread's
/// dead records, which it removes), so every later count still agrees.
#[test]
fn small_limits_agree_with_the_model() {
    run_case(Case {
        name: "limits",
        config: StoreConfig {
            max_credentials_per_thread: 2,
            max_credentials: 16,
            max_credential_bytes: 16 * 66,
            touch_reply_limit: 1,
            ..StoreConfig::default()
        },
        quota: Some(5),
        seeds: 10,
        steps: 6_000,
        limits_reached: true,
        tombstones_overflow: false,
    });
}
