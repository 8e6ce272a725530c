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
//! Every case but one runs on the durable store ([`Store::open`] on a data
//! directory on tmpfs, so that Mints, which wait for an fsync each, stay
//! fast), so its own paths (pending Mints, journaled revocations, renewal
//! checkpoints) are under the same specification, and about once in
//! [`RESTART_ONE_IN`] steps it restarts: cleanly ([`Store::close`]) or as a
//! crash right after a checkpoint, on the same clock ([`Run::restart`]). A
//! clean restart keeps everything exactly; a crash counts every credential
//! live at the crash as used then ([`Model::restart`]). After each restart
//! every held credential is read at one millisecond before and at its idle
//! deadline, and every credential and thread is compared, all without
//! renewing anything (a Resolve for a scope no Mint grants); then the
//! counts. Each case asserts it restarted both ways. Four store bugs this
//! found are worked around, each behind a flag that names it
//! (`KNOWN_BUG_*`, with a reproduction): set one to false and the test
//! fails on its bug.
//!
//! The cases: the defaults; an absolute lifetime; 50 ms idle and 1 s max
//! lifetime; three tombstones kept 5 s; small per-thread, quota and budget
//! limits; and the small limits again on the memory store ([`Store::new`]).
//! Each asserts what its runs reached ([`Coverage`]): live answers
//! one millisecond before a deadline and deaths at it, every death reason
//! and revocation cause, scope refusals, forgotten tombstones, sweeps that
//! remove, re-queue and reclaim, and (where configured) every limit and
//! the tombstone overflow, so a generator that stops reaching them fails.
//! `STORE_MODEL_TRACE="<case> <seed>"` prints that run's steps.
//!
//! Each check names, in its doc comment, the broken implementation it
//! catches. Checked by breaking the store, each caught by at least one
//! case with a message naming the step, the call and the credential's
//! model state (on the memory store, before the durable runs; the restart
//! checks by a replay that skips the crash bound, a close that skips its
//! checkpoint, and RevokeAll's stamps replayed at the next epoch):
//! `now >= died_at` written `now > died_at` in `death`; a
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

mod actions;
mod changes;
mod model;
mod reads;
mod restart;
mod run;
mod tombstones;

use actions::*;
use model::*;
use restart::*;
use run::*;
use tombstones::*;

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

/// The scope no Mint grants (a Mint grants a proper prefix of [`SCOPES`]):
/// a Resolve that requires it reads a credential without renewing it (a
/// live one is refused for the scope, a dead one gives its reason).
const UNGRANTED_SCOPE: &str = SCOPES[SCOPES.len() - 1];

/// The labels a Mint gives a prefix of (sorted by key, as the service
/// passes them).
const LABELS: [(&str, &str); 3] = [("env", "env-7"), ("region", "eu-west"), ("tier", "gold")];

/// How many due deadlines the store's sweep handles per batch
/// (`SWEEP_BATCH` in `src/store/sweeper.rs`): a restart queues every
/// credential ever minted, so a sweep after one can handle several.
const SWEEP_BATCH: usize = 1024;

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
// Known store bugs
// ---------------------------------------------------------------------------
//
// Found by this test and reported, not fixed here. While a flag is true
// the model works around its bug as its doc says, so that every other
// check still runs; set it to false once the store is fixed, and the
// model then expects the specified behaviour (with the flag false the
// test fails on the bug, which is how each was confirmed).

/// A sweep forgets tombstones (by digest, by id, by thread) past their
/// retention, but nothing journals that, and replay re-records every
/// removal without a sweep: after a restart, even a clean one, a
/// credential whose tombstone had been forgotten answers TOKEN_REVOKED
/// (or expired) again instead of unknown, until the next sweep; and a
/// thread's resurrected death can keep an older credential's later death
/// of the same thread and owner out for good (`ThreadTombstones::record`
/// keeps the newer by mint time). Reproduction: retention 5 s; mint, revoke
/// the credential, advance 6 s, sweep (tombstone count 0, Resolve answers
/// unknown); close, open: tombstone count 1, Resolve answers
/// `Dead(Revoked(Credential))`. While true, [`Model::restart`] rebuilds the
/// tombstones as replay does ([`Graves::replay`], [`ThreadGraves::replay`]).
///
/// Fixed in the store since: false, so the checks it relaxed run in full;
/// true brings back the workaround that hid the bug.
const KNOWN_BUG_REPLAY_KEEPS_AGED_TOMBSTONES: bool = false;

/// A Mint on a full thread first removes the thread's dead records
/// (`Shared::replacement` in `src/store/mint.rs`, through `detach`, not
/// `remove_from_thread`), and that removal is not journaled: after a
/// restart, even a clean one, the records are back (record count and
/// budgets higher than before, a thread over its limit, RevokeAll counting
/// them, the owner's quota counting them) and their tombstones gone until
/// a sweep removes them again and records new ones, at a later time.
/// Reproduction: one credential per thread; mint A, advance past its idle
/// timeout, mint B on the same thread (A removed: 1 record, budget (1, 3));
/// close, open: 2 records, budget (2, 6), `revoke_all(Everything)` counts
/// 2. While true, restarts are drawn only until a full thread's Mint first
/// removes a record ([`Run::restart_allowed`]), which only the small-limits
/// case reaches.
///
/// Partly fixed: the removal is journaled now (as a sweep's), and the
/// records no longer come back. Still open: after such a removal a
/// restart can answer a thread's newest death differently (Touch by thread
/// found `Unknown` where the model expects the removed record's death), so
/// the workaround stays on until that is understood.
const KNOWN_BUG_FULL_THREAD_CLEANUP_NOT_JOURNALED: bool = true;

/// Replay removes records (a Mint's replacement, a sweep's removal, whose
/// journal records do not say why the credential died) with the last uses
/// of the checkpoint before, since the uses made after it are journaled
/// only at the next checkpoint, which comes later in the journal: the
/// tombstone a restart rebuilds can then give another reason than memory
/// did. Reproduction: 10 s idle; mint A, advance 8 s, resolve A, advance
/// 4 s, mint B replacing A (A: `Revoked(Replaced)`, `replaced` 1); close,
/// open: A answers `Dead(IdleTimeout)`. With the server's checkpointer (every
/// second) the window is the second before a removal; while true, the runs
/// checkpoint before every call that may remove a record ([`Run::run`]),
/// which closes it (and leaves the uses of the calls since to the stop's
/// own checkpoint).
///
/// Fixed in the store since: false, so the checks it relaxed run in full;
/// true brings back the workaround that hid the bug.
const KNOWN_BUG_REMOVAL_REPLAYED_WITH_STALE_USES: bool = false;

/// After a crash, replay counts every credential live at the newest
/// recorded time as used then (`finish` in `src/store/durable/replay.rs`),
/// in memory only: nothing journals it, and the use is not marked for the
/// next checkpoint, so the next restart, even a clean one, replays the
/// last uses from before the crash and the credentials the bound kept
/// alive die early (a second crash's bound then misses those it finds
/// dead), and their removals replay with other reasons. Reproduction:
/// 10 s idle; mint A at t; advance 5 s; checkpoint, sync, drop (a crash);
/// open: A is live at t + 12 (idle deadline t + 15); close, open: A answers
/// `Dead(IdleTimeout)` at t + 12 (idle deadline t + 10). While true, a
/// crash restart is followed by a Resolve of every live credential at the
/// restart's time ([`Run::journal_the_crash_bound`]), which the model
/// already counts as their use.
///
/// Fixed in the store since: false, so the checks it relaxed run in full;
/// true brings back the workaround that hid the bug.
const KNOWN_BUG_CRASH_BOUND_NOT_JOURNALED: bool = false;

// ---------------------------------------------------------------------------
// Configurations
// ---------------------------------------------------------------------------

/// How often a durable run restarts: rarely enough that most steps run on
/// a store with a history, often enough that every case restarts a few
/// times per seed.
const RESTART_ONE_IN: usize = 300;

/// How often the small-limits runs restart: often, since they may restart
/// only until a full thread's Mint first removes a record
/// ([`KNOWN_BUG_FULL_THREAD_CLEANUP_NOT_JOURNALED`]), which comes early.
const RESTART_ONE_IN_BEFORE_A_FULL_THREAD: usize = 15;

/// Where a run keeps its store.
#[derive(Debug, Clone, Copy)]
enum Storage {
    /// [`Store::new`]: nothing survives the run.
    Memory,
    /// [`Store::open`] on a data directory of its own, restarted about once
    /// in `restart_one_in` steps, half of them crashes.
    Durable { restart_one_in: usize },
}

/// One configuration a run drives.
struct Case {
    name: &'static str,
    config: StoreConfig,
    quota: Option<u64>,
    storage: Storage,
    seeds: u64,
    steps: usize,
    /// Whether every limit (thread, quota, credentials, bytes) must refuse
    /// some Mint over the case's seeds.
    limits_reached: bool,
    /// Whether sweeps must overflow the tombstone capacity (so that the
    /// answers the model is unsure of are exercised).
    tombstones_overflow: bool,
}

/// Runs a case over its seeds; checks that they reached what
/// [`Coverage`] counts, that the limits it should reach refused some
/// Mints, and that a durable case restarted both cleanly and after a
/// crash.
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
    )
    .chain(
        matches!(case.storage, Storage::Durable { .. })
            .then_some([
                ("clean restarts", c.clean_restarts),
                ("restarts after a crash", c.crash_restarts),
            ])
            .into_iter()
            .flatten(),
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
        storage: Storage::Durable {
            restart_one_in: RESTART_ONE_IN,
        },
        seeds: 10,
        steps: 3_000,
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
        storage: Storage::Durable {
            restart_one_in: RESTART_ONE_IN,
        },
        seeds: 10,
        steps: 3_000,
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
        storage: Storage::Durable {
            restart_one_in: RESTART_ONE_IN,
        },
        seeds: 10,
        steps: 3_000,
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
        storage: Storage::Durable {
            restart_one_in: RESTART_ONE_IN,
        },
        seeds: 10,
        steps: 3_000,
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
        storage: Storage::Durable {
            restart_one_in: RESTART_ONE_IN_BEFORE_A_FULL_THREAD,
        },
        seeds: 10,
        steps: 3_000,
        limits_reached: true,
        tombstones_overflow: false,
    });
}

/// The small limits again, on the memory store ([`Store::new`]), whose
/// Mint shows the new credential at once instead of after its journal
/// write: every case above runs on the durable store, so this keeps the
/// memory store's own paths (and its refusals, in their order) under the
/// same specification.
#[test]
fn small_limits_on_the_memory_store_agree_with_the_model() {
    run_case(Case {
        name: "limits-memory",
        config: StoreConfig {
            max_credentials_per_thread: 2,
            max_credentials: 16,
            max_credential_bytes: 16 * 66,
            touch_reply_limit: 1,
            ..StoreConfig::default()
        },
        quota: Some(5),
        storage: Storage::Memory,
        seeds: 10,
        steps: 3_000,
        limits_reached: true,
        tombstones_overflow: false,
    });
}
