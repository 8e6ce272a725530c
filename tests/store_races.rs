//! Races between the store's writers (revocations, rotations, renewals) and
//! Resolve, on the in-memory store.
//!
//! Every race starts its threads with a [`Barrier`], never a sleep, and
//! proves that it interleaved: the writer waits (a bounded spin) until every
//! resolver is resolving, the resolvers count the resolves that began after
//! the writer returned, and a round in which none did fails, since it would
//! prove nothing. Outcomes are compared whole: the credential a success
//! names, and the reason and cause of a refusal, not just success or
//! failure. Each race repeats a bounded number of rounds to raise the odds
//! of hitting a narrow window, and every loop is bounded.
//!
//! The renewal race starts each round with a [`Barrier`] too, but releases
//! the bursts within a round with a spinning barrier: the lost update it
//! looks for lives for a few instructions, far less than the microseconds
//! [`Barrier`] takes to wake its waiters.
//!
//! Each test's doc names the broken implementations it catches; two of them
//! were checked by breaking the store on purpose (renewal with a plain store
//! instead of `fetch_max`, and a rotation that makes the new record visible
//! before it revokes the old one): both failed here.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, OnceLock};
use std::thread;
use std::time::Duration;

use credential_authority::clock::{Clock, FakeClock, Millis};
use credential_authority::store::{
    Deadlines, DeathReason, NewCredential, Reach, Rejection, RevocationCause, RevokeAllTarget,
    Store, StoreConfig,
};
use credential_authority::token::{CredentialId, Token, TokenDigest};

const START: Millis = 1_800_000_000_000;

/// Rounds of each revocation race.
const ROUNDS: usize = 50;

/// Threads resolving against the writer: with the writer, twice the two
/// cores the test machines have, so that some resolver is always running.
const RESOLVERS: usize = 3;

/// How many resolves each resolver runs after it saw that the writer was
/// done with everything it does (the revocation, and the reclaim that
/// follows a RevokeAll).
const AFTER_SETTLED: usize = 64;

/// The bound of one resolver's loop: reached only if the writer thread
/// never gets to run, which fails the round.
const MAX_RESOLVES: usize = 2_000_000;

/// The bound of a spinning wait (for the resolvers to be running, or at a
/// spinning barrier).
const MAX_SPINS: usize = 10_000_000;

/// What one Resolve answered, reduced to what the races compare.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Accepted, naming this credential.
    Live(CredentialId),
    /// Refused as dead: whose death, and why.
    Dead(CredentialId, DeathReason),
    /// Refused as never seen.
    Unknown,
    /// Any other refusal: never right in these races.
    Other(String),
}

/// Resolves `digest` without copying the answer, so that a resolver runs
/// as many resolves as it can in a race's window.
fn resolve(store: &Store, digest: &TokenDigest) -> Outcome {
    match store.resolve_with(digest, None, |view| view.credential_id) {
        Ok(id) => Outcome::Live(id),
        Err(Rejection::Dead(dead)) => Outcome::Dead(dead.credential_id, dead.reason),
        Err(Rejection::Unknown) => Outcome::Unknown,
        Err(other) => Outcome::Other(other.to_string()),
    }
}

/// A credential as its minter knows it.
#[derive(Debug, Clone, Copy)]
struct Credential {
    digest: TokenDigest,
    id: CredentialId,
}

impl Credential {
    fn live(&self) -> Outcome {
        Outcome::Live(self.id)
    }

    fn revoked(&self, cause: RevocationCause) -> Outcome {
        Outcome::Dead(self.id, DeathReason::Revoked(cause))
    }
}

fn fake_store(config: StoreConfig) -> (Store, FakeClock) {
    let clock = FakeClock::new(START);
    (Store::new(config, Arc::new(clock.clone())), clock)
}

fn credential<'a>(minted_by: &'a str, thread_id: &'a str, instance: &'a str) -> NewCredential<'a> {
    NewCredential {
        thread_id,
        provider_instance_id: instance,
        minted_by,
        ..NewCredential::default()
    }
}

fn mint_as(store: &Store, minted_by: &str, thread_id: &str, instance: &str) -> Credential {
    let digest = Token::generate().digest();
    let minted = store
        .mint(digest, credential(minted_by, thread_id, instance))
        .unwrap();
    Credential {
        digest,
        id: minted.credential_id,
    }
}

/// The store's books agree with what it holds, on a quiet store.
fn consistent(store: &Store) {
    #[cfg(debug_assertions)]
    store.check_invariants().unwrap();
    assert_eq!(store.budget_used().0, store.record_count() as u64);
}

/// Whether two threads can really run at once here: only then is a resolve
/// overlapping a microsecond-long revocation something to require.
fn parallel() -> bool {
    thread::available_parallelism().map_or(1, |n| n.get()) >= 2
}

/// What went wrong in one thread: how often, and the first few messages.
#[derive(Debug, Default)]
struct Violations {
    count: usize,
    first: Vec<String>,
}

impl Violations {
    fn push(&mut self, message: impl FnOnce() -> String) {
        self.count += 1;
        if self.first.len() < 5 {
            self.first.push(message());
        }
    }

    fn absorb(&mut self, other: Violations) {
        self.count += other.count;
        self.first
            .extend(other.first.into_iter().take(5 - self.first.len().min(5)));
    }

    fn assert_none(&self, context: &str) {
        assert!(
            self.count == 0,
            "{context}: {} violations, first: {:#?}",
            self.count,
            self.first
        );
    }
}

/// When a race's writer began, returned and settled (finished what it does
/// after returning), as the resolvers see it; and how many resolvers are
/// running, so the writer starts among running resolves.
#[derive(Default)]
struct Timeline {
    running: AtomicUsize,
    began: AtomicBool,
    returned: AtomicBool,
    settled: AtomicBool,
}

impl Timeline {
    /// Spins (bounded, yielding, never sleeping) until `resolvers` threads
    /// said they are resolving.
    fn wait_for_resolvers(&self, resolvers: usize) {
        for _ in 0..MAX_SPINS {
            if self.running.load(SeqCst) >= resolvers {
                return;
            }
            thread::yield_now();
        }
        panic!("the resolvers never started");
    }
}

/// What one resolver saw during a race.
#[derive(Debug, Default)]
struct Tally {
    /// Resolves in the race that began before the writer returned.
    before: u64,
    /// Of those, the ones that ended after the writer began: they
    /// overlapped it.
    overlapped: u64,
    /// Resolves that began after the writer returned: what the race is for.
    after: u64,
    /// Whether the resolver hit [`MAX_RESOLVES`] before the writer settled.
    exhausted: bool,
    violations: Violations,
}

/// What many resolvers saw in one round.
#[derive(Debug, Default)]
struct RoundTally {
    before: u64,
    overlapped: u64,
    after: u64,
    exhausted: usize,
    violations: Violations,
}

impl RoundTally {
    fn add(&mut self, tally: Tally) {
        self.before += tally.before;
        self.overlapped += tally.overlapped;
        self.after += tally.after;
        self.exhausted += usize::from(tally.exhausted);
        self.violations.absorb(tally.violations);
    }

    /// The round interleaved: every resolver ran to the end, and some
    /// resolves began before the writer returned and some after.
    fn assert_interleaved(&self, context: &str) {
        assert_eq!(
            self.exhausted, 0,
            "{context}: a resolver gave up before the writer settled"
        );
        assert!(
            self.before > 0,
            "{context}: no resolve began before the writer returned"
        );
        assert!(
            self.after > 0,
            "{context}: no resolve began after the writer returned, so the round proves nothing"
        );
    }
}

/// One round of a revocation race.
struct RevocationRound {
    store: Store,
    /// What the revocation must end, with its cause.
    doomed: Vec<Credential>,
    /// What it must leave live.
    spared: Vec<Credential>,
    /// The revocation; returns how many live credentials it reports ended.
    revoke: Box<dyn FnOnce(&Store) -> u64>,
    /// RevokeAll leaves the records to be reclaimed: then the round reclaims
    /// them while the resolves go on, and expects each doomed one reclaimed.
    reclaim: bool,
}

/// Runs [`ROUNDS`] rounds of a revocation against [`RESOLVERS`] resolvers
/// that resolve doomed and spared credentials in turn, and checks every
/// answer:
///
/// - a spared credential always resolves, to itself;
/// - a doomed one resolves, to itself, until it is first refused, and is
///   then refused for good as revoked with `cause`, naming itself;
/// - every resolve of a doomed one that began after the revocation returned
///   (there must be some) is refused so;
/// - and once all is quiet, the same holds and the store's books agree.
fn revocation_race(cause: RevocationCause, round: impl Fn(usize) -> RevocationRound) {
    let mut overlapped = 0;
    for number in 0..ROUNDS {
        let RevocationRound {
            store,
            doomed,
            spared,
            revoke,
            reclaim,
        } = round(number);
        let context = format!("{cause:?} round {number}");
        let timeline = Arc::new(Timeline::default());
        let barrier = Arc::new(Barrier::new(RESOLVERS + 1));
        let resolvers: Vec<_> = (0..RESOLVERS)
            .map(|offset| {
                let (store, timeline, barrier) = (store.clone(), timeline.clone(), barrier.clone());
                let (doomed, spared) = (doomed.clone(), spared.clone());
                thread::spawn(move || {
                    resolve_through_revocation(
                        &store, &doomed, &spared, cause, &timeline, &barrier, offset,
                    )
                })
            })
            .collect();
        barrier.wait();
        timeline.wait_for_resolvers(RESOLVERS);
        timeline.began.store(true, SeqCst);
        let revoked = revoke(&store);
        timeline.returned.store(true, SeqCst);
        let reclaimed = reclaim.then(|| store.sweep().reclaimed);
        timeline.settled.store(true, SeqCst);
        let mut tally = RoundTally::default();
        for resolver in resolvers {
            tally.add(resolver.join().unwrap());
        }
        tally.violations.assert_none(&context);
        tally.assert_interleaved(&context);
        assert_eq!(
            revoked,
            doomed.len() as u64,
            "{context}: the revocation counts each credential it ended, once"
        );
        if let Some(reclaimed) = reclaimed {
            assert_eq!(reclaimed, doomed.len(), "{context}: reclaimed");
        }
        for c in &doomed {
            assert_eq!(resolve(&store, &c.digest), c.revoked(cause), "{context}");
        }
        for c in &spared {
            assert_eq!(resolve(&store, &c.digest), c.live(), "{context}");
        }
        consistent(&store);
        overlapped += tally.overlapped;
    }
    if parallel() {
        assert!(
            overlapped > 0,
            "{cause:?}: no resolve overlapped the revocation in {ROUNDS} rounds"
        );
    }
}

/// One resolver of [`revocation_race`]: every other resolve is of a doomed
/// credential, so both kinds are resolved throughout.
fn resolve_through_revocation(
    store: &Store,
    doomed: &[Credential],
    spared: &[Credential],
    cause: RevocationCause,
    timeline: &Timeline,
    barrier: &Barrier,
    offset: usize,
) -> Tally {
    let mut tally = Tally::default();
    barrier.wait();
    let mut ended = vec![false; doomed.len()];
    let mut left_after_settled = AFTER_SETTLED;
    tally.exhausted = true;
    for i in 0..MAX_RESOLVES {
        let turn = i / 2 + offset;
        let (c, doomed_index) = if spared.is_empty() || i % 2 == 0 {
            let k = turn % doomed.len();
            (&doomed[k], Some(k))
        } else {
            (&spared[turn % spared.len()], None)
        };
        let settled = timeline.settled.load(SeqCst);
        let after = timeline.returned.load(SeqCst);
        let seen = resolve(store, &c.digest);
        let overlapping = timeline.began.load(SeqCst);
        if i == 0 {
            timeline.running.fetch_add(1, SeqCst);
        }
        let fine = match doomed_index {
            None => seen == c.live(),
            Some(_) if after => seen == c.revoked(cause),
            Some(k) => (seen == c.live() && !ended[k]) || seen == c.revoked(cause),
        };
        if let Some(k) = doomed_index {
            ended[k] |= seen == c.revoked(cause);
        }
        if !fine {
            tally.violations.push(|| {
                let (kind, expected) = match doomed_index {
                    None => ("spared", c.live()),
                    Some(_) => ("doomed", c.revoked(cause)),
                };
                let when = if after { "after" } else { "before" };
                format!(
                    "a resolve of a {kind} credential {c:?} that began {when} the revocation \
                     returned answered {seen:?}; expected {expected:?}{}",
                    if after {
                        ""
                    } else {
                        " (or itself, until refused)"
                    }
                )
            });
        }
        if after {
            tally.after += 1;
        } else {
            tally.before += 1;
            tally.overlapped += u64::from(overlapping);
        }
        if settled {
            left_after_settled -= 1;
            if left_after_settled == 0 {
                tally.exhausted = false;
                break;
            }
        }
    }
    tally
}

/// RevokeCredential against Resolve of it and of its neighbours (a sibling
/// in its thread, a credential of another thread on its instance).
///
/// Catches: a revocation deferred to the sweeper, or one that only marks
/// the record so that a resolve already past the check renews it and a
/// later one still accepts it (a resolve after the return succeeds); one
/// that removes the record before writing its tombstone, or outside the
/// shard's write lock (a resolve answers `Unknown`); the wrong cause; and a
/// revocation that reaches the sibling or the thread.
#[test]
fn no_resolve_after_revoke_credential_returned_accepts_it() {
    revocation_race(RevocationCause::Credential, |round| {
        let (store, _clock) = fake_store(StoreConfig::default());
        let doomed = mint_as(&store, "alice", "thread", "claude-1");
        let sibling = mint_as(&store, "alice", "thread", "codex-1");
        let neighbour = mint_as(&store, "alice", "other-thread", "claude-1");
        let reach = if round % 2 == 0 {
            Reach::All
        } else {
            Reach::MintedBy("alice")
        };
        RevocationRound {
            store,
            doomed: vec![doomed],
            spared: vec![sibling, neighbour],
            revoke: Box::new(move |store| {
                let revocation = store.revoke_credential(&doomed.id, reach).unwrap();
                assert_eq!(revocation.thread_id.as_deref(), Some("thread"));
                assert_eq!(revocation.provider_instance_id.as_deref(), Some("claude-1"));
                revocation.revoked
            }),
            reclaim: false,
        }
    });
}

/// RevokeThread against Resolve of the thread's credentials (two instances,
/// two callers) and of another thread's. Odd rounds revoke within one
/// caller's reach, so the other caller's credential in the thread must stay
/// live.
///
/// Catches: a RevokeThread that revokes the list after releasing the
/// thread's lock, or marks records that in-flight resolves then renew (a
/// resolve after the return succeeds); one that unlinks a record before its
/// tombstone is written (`Unknown`); the wrong cause; and one that ignores
/// the reach or reaches another thread.
#[test]
fn no_resolve_after_revoke_thread_returned_accepts_its_credentials() {
    revocation_race(RevocationCause::Thread, |round| {
        let (store, _clock) = fake_store(StoreConfig::default());
        let alice_claude = mint_as(&store, "alice", "thread", "claude-1");
        let alice_codex = mint_as(&store, "alice", "thread", "codex-1");
        let bob_claude = mint_as(&store, "bob", "thread", "claude-1");
        let other_thread = mint_as(&store, "alice", "other-thread", "claude-1");
        let (doomed, spared, reach) = if round % 2 == 0 {
            (
                vec![alice_claude, alice_codex, bob_claude],
                vec![other_thread],
                Reach::All,
            )
        } else {
            (
                vec![alice_claude, alice_codex],
                vec![bob_claude, other_thread],
                Reach::MintedBy("alice"),
            )
        };
        let not_owned = u64::from(round % 2 == 1);
        RevocationRound {
            store,
            doomed,
            spared,
            revoke: Box::new(move |store| {
                let revocation = store.revoke_thread("thread", reach);
                assert_eq!(revocation.not_owned, not_owned);
                revocation.revoked
            }),
            reclaim: false,
        }
    });
}

/// RevokeAll of everything against Resolve, with the reclaim of the revoked
/// records racing the resolves too.
///
/// Catches: a stamp published before the epoch it names, or checked by
/// Resolve against the wrong epoch (a resolve after the return succeeds);
/// a reclaim that removes a record before writing its tombstone
/// (`Unknown`), or whose tombstone names another cause; a count off by the
/// credentials already reclaimed.
#[test]
fn no_resolve_after_revoke_all_returned_accepts_anything() {
    revocation_race(RevocationCause::All, |_| {
        let (store, _clock) = fake_store(StoreConfig::default());
        let doomed = vec![
            mint_as(&store, "alice", "t1", "claude-1"),
            mint_as(&store, "bob", "t2", "codex-1"),
            mint_as(&store, "alice", "t3", "codex-1"),
        ];
        RevocationRound {
            store,
            doomed,
            spared: vec![],
            revoke: Box::new(|store| store.revoke_all(RevokeAllTarget::Everything)),
            reclaim: true,
        }
    });
}

/// RevokeAll of one caller's credentials against Resolve of them and of
/// another caller's on the same thread and instance, with the reclaim
/// racing the resolves.
///
/// Catches: a caller's stamp that Resolve reads late or not at all (a
/// resolve after the return succeeds); a revocation that reaches the other
/// caller, or reports the instance's or everything's cause; a reclaim that
/// loses the reason (`Unknown`).
#[test]
fn no_resolve_after_revoke_all_of_a_caller_returned_accepts_its_credentials() {
    revocation_race(RevocationCause::Caller, |_| {
        let (store, _clock) = fake_store(StoreConfig::default());
        let doomed = vec![
            mint_as(&store, "alice", "t1", "claude-1"),
            mint_as(&store, "alice", "t2", "codex-1"),
        ];
        let spared = vec![
            mint_as(&store, "bob", "t1", "claude-1"),
            mint_as(&store, "bob", "t3", "codex-1"),
        ];
        RevocationRound {
            store,
            doomed,
            spared,
            revoke: Box::new(|store| store.revoke_all(RevokeAllTarget::MintedBy("alice"))),
            reclaim: true,
        }
    });
}

/// RevokeAll of one provider instance (even rounds: every caller's; odd
/// rounds: one caller's) against Resolve of its credentials and of another
/// instance's, with the reclaim racing the resolves.
///
/// Catches: an instance stamp that Resolve reads late (a resolve after the
/// return succeeds); a revocation that stamps only some of the instance's
/// callers, or reaches another instance or, for one caller, the other
/// caller; the wrong cause; a reclaim that loses the reason (`Unknown`).
#[test]
fn no_resolve_after_revoke_all_of_an_instance_returned_accepts_its_credentials() {
    revocation_race(RevocationCause::ProviderInstance, |round| {
        let (store, _clock) = fake_store(StoreConfig::default());
        let alice_claude = mint_as(&store, "alice", "t1", "claude-1");
        let bob_claude = mint_as(&store, "bob", "t2", "claude-1");
        let alice_codex = mint_as(&store, "alice", "t1", "codex-1");
        let (doomed, spared, target) = if round % 2 == 0 {
            (
                vec![alice_claude, bob_claude],
                vec![alice_codex],
                RevokeAllTarget::Instance("claude-1"),
            )
        } else {
            (
                vec![alice_claude],
                vec![bob_claude, alice_codex],
                RevokeAllTarget::MintedByForInstance {
                    minted_by: "alice",
                    provider_instance_id: "claude-1",
                },
            )
        };
        RevocationRound {
            store,
            doomed,
            spared,
            revoke: Box::new(move |store| store.revoke_all(target)),
            reclaim: true,
        }
    });
}

/// Tickets from one sequence order the resolves of a race: a resolve takes
/// one as it begins and one as it ends, so "ended before the other began"
/// is a comparison of tickets.
#[derive(Debug)]
struct Acceptance {
    /// The ticket at the end of the earliest accepted resolve.
    first_end: AtomicU64,
    /// The ticket at the start of the latest accepted resolve (0: none).
    last_start: AtomicU64,
}

impl Default for Acceptance {
    fn default() -> Self {
        Acceptance {
            first_end: AtomicU64::new(u64::MAX),
            last_start: AtomicU64::new(0),
        }
    }
}

impl Acceptance {
    fn accepted(&self, start: u64, end: u64) {
        self.first_end.fetch_min(end, SeqCst);
        self.last_start.fetch_max(start, SeqCst);
    }

    /// Whether this token and `other` were both accepted at one instant:
    /// one accepted, then the other, then the first again. A token's live
    /// time is one interval (nothing revives), so if an acceptance of `a`
    /// ended before one of `b` began and one of `b` ended before one of `a`
    /// began, the intervals overlap.
    fn overlaps(&self, other: &Acceptance) -> bool {
        let (a_first, a_last) = (self.first_end.load(SeqCst), self.last_start.load(SeqCst));
        let (b_first, b_last) = (other.first_end.load(SeqCst), other.last_start.load(SeqCst));
        a_first < b_last && b_first < a_last
    }
}

/// The tokens of one thread's rotations, in the order they are minted (the
/// first before the race), and what the resolvers saw of them.
struct Chain {
    digests: Vec<TokenDigest>,
    /// Each token's credential id, set when its Mint returns.
    ids: Vec<OnceLock<CredentialId>>,
    accepted: Vec<Acceptance>,
    sequence: AtomicU64,
}

impl Chain {
    fn new(tokens: usize) -> Self {
        Chain {
            digests: (0..tokens).map(|_| Token::generate().digest()).collect(),
            ids: (0..tokens).map(|_| OnceLock::new()).collect(),
            accepted: (0..tokens).map(|_| Acceptance::default()).collect(),
            sequence: AtomicU64::new(1),
        }
    }

    /// Mints token `index` of the thread, replacing the earlier ones when
    /// `rotate`; returns how many it replaced.
    fn mint(&self, store: &Store, index: usize, rotate: bool) -> u64 {
        let minted = store
            .mint(
                self.digests[index],
                NewCredential {
                    replace_previous: rotate,
                    ..credential("adapter", "thread", "claude-1")
                },
            )
            .unwrap();
        self.ids[index].set(minted.credential_id).unwrap();
        minted.replaced
    }

    fn credential(&self, index: usize) -> Credential {
        Credential {
            digest: self.digests[index],
            id: *self.ids[index].get().unwrap(),
        }
    }

    /// The first two tokens both accepted at one instant, if any.
    fn overlapping_pair(&self) -> Option<(usize, usize)> {
        let accepted = &self.accepted;
        (0..accepted.len())
            .flat_map(|a| (a + 1..accepted.len()).map(move |b| (a, b)))
            .find(|&(a, b)| accepted[a].overlaps(&accepted[b]))
    }
}

/// What a resolve of a chain's token may answer, from what had returned
/// when it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Its Mint may not have returned: unknown, live or replaced.
    Anything,
    /// Its Mint had returned: live or replaced.
    Minted,
    /// The rotation that replaced it had returned: replaced.
    Replaced,
}

/// One resolver's view of a chain: how far each token has gone (unknown,
/// live, replaced; never backwards), and the ids its answers named.
struct Watcher {
    stage: Vec<u8>,
    named: Vec<Option<CredentialId>>,
    /// Resolves that began after the rotation replacing their token returned.
    after: u64,
    violations: Violations,
}

impl Watcher {
    fn new(tokens: usize) -> Self {
        Watcher {
            stage: vec![0; tokens],
            named: vec![None; tokens],
            after: 0,
            violations: Violations::default(),
        }
    }

    /// Resolves token `index`, records an acceptance on the chain, and
    /// checks the answer against `expect` and against what this resolver
    /// saw of the token before. Returns whether the token was accepted.
    fn resolve(&mut self, store: &Store, chain: &Chain, index: usize, expect: Expect) -> bool {
        let start = chain.sequence.fetch_add(1, SeqCst);
        let seen = resolve(store, &chain.digests[index]);
        let end = chain.sequence.fetch_add(1, SeqCst);
        self.after += u64::from(expect == Expect::Replaced);
        let (stage, id) = match seen {
            Outcome::Unknown => (0, None),
            Outcome::Live(id) => {
                chain.accepted[index].accepted(start, end);
                (1, Some(id))
            }
            Outcome::Dead(id, DeathReason::Revoked(RevocationCause::Replaced)) => (2, Some(id)),
            _ => (3, None),
        };
        let allowed = match expect {
            Expect::Anything => stage <= 2,
            Expect::Minted => stage == 1 || stage == 2,
            Expect::Replaced => stage == 2,
        };
        if !allowed {
            self.violations.push(|| {
                format!(
                    "token {index}, expected {expect:?} when its resolve began, answered {seen:?}"
                )
            });
        }
        if stage < self.stage[index] {
            let before =
                ["unknown", "accepted", "refused as replaced"][usize::from(self.stage[index] - 1)];
            self.violations
                .push(|| format!("token {index} answered {seen:?} after it had been {before}"));
        }
        self.stage[index] = self.stage[index].max(stage.min(2));
        if let Some(id) = id {
            match self.named[index] {
                None => self.named[index] = Some(id),
                Some(first) if first != id => self
                    .violations
                    .push(|| format!("token {index} answered as {id:?}, earlier as {first:?}")),
                Some(_) => {}
            }
        }
        stage == 1
    }

    /// After the race: the ids the answers named are the tokens' own.
    fn check_ids(&mut self, chain: &Chain) {
        for (index, named) in self.named.iter().enumerate() {
            if let Some(id) = named {
                if chain.ids[index].get() != Some(id) {
                    self.violations.push(|| {
                        format!(
                            "token {index} answered as {id:?}, but its Mint returned {:?}",
                            chain.ids[index].get()
                        )
                    });
                }
            }
        }
    }
}

/// Rotations of one thread per round (each a Mint with `replace_previous`),
/// and rounds.
const CHAIN: usize = 100;
const CHAIN_ROUNDS: usize = 10;

/// Rotation against Resolve: the main thread rotates one thread's
/// credential [`CHAIN`] times in a row while the resolvers resolve, on each
/// pass, the token being minted, then the current one, then the one the
/// last returned rotation replaced, and now and then a sibling credential
/// of the thread on another instance.
///
/// Checks, with the shared ticket sequence, that no two tokens were ever
/// both accepted (see [`Acceptance::overlaps`]: the new token accepted,
/// then the old one); that every resolve that began after a rotation
/// returned refused the token it replaced as replaced, naming it; that a
/// token whose Mint returned is never unknown; that no token goes back
/// (unknown, accepted, refused); and that each rotation replaced exactly
/// one credential and left the sibling alone.
///
/// Catches: a rotation that inserts or links the new record before it
/// revokes the old one (both accepted: checked by breaking `Store::mint`
/// so); one that revokes the old one after the Mint returns, or lazily (a
/// resolve after the return accepts it); one that removes the old record
/// before writing its tombstone (`Unknown`); the wrong cause; and one that
/// replaces the other instance's credential.
#[test]
fn rotation_never_lets_the_old_and_new_tokens_both_work() {
    let mut in_progress = 0u64;
    for round in 0..CHAIN_ROUNDS {
        let context = format!("rotation round {round}");
        let (store, _clock) = fake_store(StoreConfig::default());
        let chain = Arc::new(Chain::new(CHAIN + 1));
        chain.mint(&store, 0, false);
        let sibling = mint_as(&store, "adapter", "thread", "codex-1");
        // Rotation i replaces token i with token i + 1.
        let (begun, returned) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let timeline = Arc::new(Timeline::default());
        let barrier = Arc::new(Barrier::new(RESOLVERS + 1));
        let resolvers: Vec<_> = (0..RESOLVERS)
            .map(|_| {
                let (store, chain, timeline, barrier) = (
                    store.clone(),
                    chain.clone(),
                    timeline.clone(),
                    barrier.clone(),
                );
                let (begun, returned) = (begun.clone(), returned.clone());
                thread::spawn(move || {
                    let mut watcher = Watcher::new(chain.digests.len());
                    let mut in_progress = 0u64;
                    let mut left_after_settled = AFTER_SETTLED;
                    let mut exhausted = true;
                    barrier.wait();
                    for pass in 0..MAX_RESOLVES {
                        let settled = timeline.settled.load(SeqCst);
                        let current = returned.load(SeqCst);
                        in_progress += u64::from(begun.load(SeqCst) > current);
                        if current < CHAIN {
                            watcher.resolve(&store, &chain, current + 1, Expect::Anything);
                        }
                        watcher.resolve(&store, &chain, current, Expect::Minted);
                        if current > 0 {
                            watcher.resolve(&store, &chain, current - 1, Expect::Replaced);
                        }
                        if pass % 4 == 0 {
                            let seen = resolve(&store, &sibling.digest);
                            if seen != sibling.live() {
                                watcher.violations.push(|| {
                                    format!("the other instance's credential answered {seen:?}")
                                });
                            }
                        }
                        if pass == 0 {
                            timeline.running.fetch_add(1, SeqCst);
                        }
                        if settled {
                            left_after_settled -= 1;
                            if left_after_settled == 0 {
                                exhausted = false;
                                break;
                            }
                        }
                    }
                    watcher.check_ids(&chain);
                    (watcher, in_progress, exhausted)
                })
            })
            .collect();
        barrier.wait();
        timeline.wait_for_resolvers(RESOLVERS);
        let mut replaced = Vec::with_capacity(CHAIN);
        for i in 0..CHAIN {
            begun.store(i + 1, SeqCst);
            replaced.push(chain.mint(&store, i + 1, true));
            returned.store(i + 1, SeqCst);
        }
        timeline.settled.store(true, SeqCst);
        let (mut violations, mut after) = (Violations::default(), 0);
        for resolver in resolvers {
            let (watcher, progress, exhausted) = resolver.join().unwrap();
            assert!(!exhausted, "{context}: a resolver gave up");
            violations.absorb(watcher.violations);
            after += watcher.after;
            in_progress += progress;
        }
        violations.assert_none(&context);
        assert!(
            after > 0,
            "{context}: no resolve began after a rotation returned"
        );
        if let Some((a, b)) = chain.overlapping_pair() {
            panic!(
                "{context}: tokens {a} and {b} were both accepted at one instant: {:?} {:?}",
                chain.accepted[a], chain.accepted[b]
            );
        }
        assert!(
            replaced.iter().all(|&n| n == 1),
            "{context}: each rotation replaces exactly its predecessor: {replaced:?}"
        );
        for index in 0..CHAIN {
            let old = chain.credential(index);
            assert_eq!(
                resolve(&store, &old.digest),
                old.revoked(RevocationCause::Replaced),
                "{context}"
            );
        }
        let newest = chain.credential(CHAIN);
        assert_eq!(resolve(&store, &newest.digest), newest.live(), "{context}");
        assert_eq!(
            resolve(&store, &sibling.digest),
            sibling.live(),
            "{context}"
        );
        consistent(&store);
    }
    if parallel() {
        assert!(
            in_progress > 0,
            "no resolve pass began while a rotation ran in {CHAIN_ROUNDS} rounds"
        );
    }
}

/// Rotating threads, the rotations each makes per round, and rounds of
/// [`concurrent_rotations_never_leave_two_tokens_working`].
const ROTATORS: usize = 2;
const ROTATIONS: usize = 40;
const ROTATION_ROUNDS: usize = 20;

/// Several threads rotate one thread's credential at once while resolvers
/// resolve, on each pass, the token each rotator is minting and then each
/// rotator's latest minted token. Checks, with the ticket sequence, that no
/// two tokens were ever both accepted (see [`Acceptance::overlaps`]); that
/// each rotation replaced exactly one credential, so the rotations took
/// turns; that a minted token is never unknown, and no token goes back
/// (unknown, accepted, refused as replaced); and that once every rotation
/// returned, exactly one token is accepted, the thread's only live
/// credential, and the others are refused as replaced (there must be such
/// resolves). The rotators' returns, ticketed, must interleave.
///
/// Catches: rotations that collect what they replace outside the thread's
/// lock, so that two racing rotations each replace the same predecessor and
/// both new tokens stay live (two accepted at once, `replaced` 0 or 2); a
/// rotation that makes its record visible before it revokes the old one;
/// a revocation that loses the reason (`Unknown`) or names another cause.
#[test]
fn concurrent_rotations_never_leave_two_tokens_working() {
    let (mut during, mut switches) = (0u64, 0usize);
    for round in 0..ROTATION_ROUNDS {
        let context = format!("concurrent rotations round {round}");
        let (store, _clock) = fake_store(StoreConfig::default());
        // Token 0 is minted first; rotator r mints tokens 1 + r * ROTATIONS..
        let chain = Arc::new(Chain::new(1 + ROTATORS * ROTATIONS));
        chain.mint(&store, 0, false);
        // Each rotator's token being minted, and its latest minted one.
        let minting: Arc<Vec<AtomicUsize>> =
            Arc::new((0..ROTATORS).map(|_| AtomicUsize::new(0)).collect());
        let minted: Arc<Vec<AtomicUsize>> =
            Arc::new((0..ROTATORS).map(|_| AtomicUsize::new(0)).collect());
        let finished = Arc::new(AtomicUsize::new(0));
        let timeline = Arc::new(Timeline::default());
        let barrier = Arc::new(Barrier::new(ROTATORS + RESOLVERS));
        let rotators: Vec<_> = (0..ROTATORS)
            .map(|r| {
                let (store, chain, timeline, barrier) = (
                    store.clone(),
                    chain.clone(),
                    timeline.clone(),
                    barrier.clone(),
                );
                let (minting, minted, finished) =
                    (minting.clone(), minted.clone(), finished.clone());
                thread::spawn(move || {
                    barrier.wait();
                    timeline.wait_for_resolvers(RESOLVERS);
                    let mut returns = Vec::with_capacity(ROTATIONS);
                    for j in 0..ROTATIONS {
                        let index = 1 + r * ROTATIONS + j;
                        minting[r].store(index, SeqCst);
                        let replaced = chain.mint(&store, index, true);
                        minted[r].store(index, SeqCst);
                        returns.push((chain.sequence.fetch_add(1, SeqCst), r, replaced));
                    }
                    finished.fetch_add(1, SeqCst);
                    returns
                })
            })
            .collect();
        let resolvers: Vec<_> = (0..RESOLVERS)
            .map(|offset| {
                let (store, chain, timeline, barrier) = (
                    store.clone(),
                    chain.clone(),
                    timeline.clone(),
                    barrier.clone(),
                );
                let (minting, minted, finished) =
                    (minting.clone(), minted.clone(), finished.clone());
                thread::spawn(move || {
                    let mut watcher = Watcher::new(chain.digests.len());
                    let (mut during, mut refused_after) = (0u64, 0u64);
                    // The tokens accepted once every rotation had returned.
                    let mut accepted_after = Vec::new();
                    let mut left_after = AFTER_SETTLED;
                    let mut exhausted = true;
                    barrier.wait();
                    for pass in 0..MAX_RESOLVES {
                        let done = finished.load(SeqCst) == ROTATORS;
                        let expect = if done {
                            Expect::Minted
                        } else {
                            Expect::Anything
                        };
                        for k in 0..ROTATORS {
                            let index = minting[(k + offset) % ROTATORS].load(SeqCst);
                            watcher.resolve(&store, &chain, index, expect);
                        }
                        for k in 0..ROTATORS {
                            let index = minted[(k + offset) % ROTATORS].load(SeqCst);
                            let accepted = watcher.resolve(&store, &chain, index, Expect::Minted);
                            if done && accepted {
                                accepted_after.push(index);
                            } else if done {
                                refused_after += 1;
                            }
                        }
                        if pass == 0 {
                            timeline.running.fetch_add(1, SeqCst);
                        }
                        if done {
                            left_after -= 1;
                            if left_after == 0 {
                                exhausted = false;
                                break;
                            }
                        } else {
                            during += 1;
                        }
                    }
                    watcher.check_ids(&chain);
                    (
                        watcher.violations,
                        during,
                        refused_after,
                        accepted_after,
                        exhausted,
                    )
                })
            })
            .collect();
        let mut returns = Vec::new();
        for rotator in rotators {
            returns.extend(rotator.join().unwrap());
        }
        let mut violations = Violations::default();
        let (mut refused_after, mut accepted_after) = (0, Vec::new());
        for resolver in resolvers {
            let (v, d, refused, accepted, exhausted) = resolver.join().unwrap();
            assert!(!exhausted, "{context}: a resolver gave up");
            violations.absorb(v);
            during += d;
            refused_after += refused;
            accepted_after.extend(accepted);
        }
        violations.assert_none(&context);
        if let Some((a, b)) = chain.overlapping_pair() {
            panic!(
                "{context}: tokens {a} and {b} were both accepted at one instant: {:?} {:?}",
                chain.accepted[a], chain.accepted[b]
            );
        }
        assert!(
            returns.iter().all(|&(_, _, replaced)| replaced == 1),
            "{context}: each rotation replaces exactly its predecessor: {returns:?}"
        );
        returns.sort_unstable();
        switches += returns.windows(2).filter(|w| w[0].1 != w[1].1).count();
        assert!(
            refused_after > 0,
            "{context}: no resolve refused a replaced token after the rotations returned"
        );
        // The one live credential: the thread's, and the only token that
        // worked once the rotations were done.
        let live = store.touch_thread("thread", Reach::All).unwrap();
        assert_eq!(live.total, 1, "{context}: live credentials of the thread");
        accepted_after.sort_unstable();
        accepted_after.dedup();
        assert_eq!(
            accepted_after.len(),
            1,
            "{context}: tokens accepted after the rotations: {accepted_after:?}"
        );
        let survivor = chain.credential(accepted_after[0]);
        assert_eq!(live.touched[0].credential_id, survivor.id, "{context}");
        for index in (0..chain.digests.len()).filter(|&i| i != accepted_after[0]) {
            let old = chain.credential(index);
            assert_eq!(
                resolve(&store, &old.digest),
                old.revoked(RevocationCause::Replaced),
                "{context}: token {index}"
            );
        }
        consistent(&store);
    }
    assert!(
        during > 0,
        "no resolve ran while the rotations did in {ROTATION_ROUNDS} rounds"
    );
    if parallel() {
        assert!(
            switches > 0,
            "the rotators never interleaved in {ROTATION_ROUNDS} rounds"
        );
    }
}

thread_local! {
    /// What this thread's readings of a [`BurstClock`] add to its base.
    static READING_OFFSET: std::cell::Cell<Millis> = const { std::cell::Cell::new(0) };
}

/// A clock whose readings are its base plus an offset each thread sets for
/// itself: the renewers of one burst read distinct times whose order has
/// nothing to do with the order in which their renewals reach the record,
/// as when threads are preempted between reading the clock and renewing.
/// Time is only what the test sets; nothing sleeps.
struct BurstClock(FakeClock);

impl Clock for BurstClock {
    fn now(&self) -> Millis {
        self.0.now() + READING_OFFSET.with(|offset| offset.get())
    }
}

/// Renewing threads (one per core of the test machines: more would only
/// take turns), bursts per round, and rounds. A plain store in place of
/// `fetch_max` moves the deadline back only when two renewals meet within
/// a few instructions; many short bursts, each in fresh threads every
/// round, catch it within a few hundred bursts in most rounds.
const RENEWERS: usize = 2;
const BURSTS: usize = 1000;
const RENEWAL_ROUNDS: usize = 20;

/// The most spins of the random head start each renewer takes in a burst,
/// so that the renewals' relative timing sweeps across the window rather
/// than keep the barrier's bias towards the thread that released it.
const JITTER: u64 = 64;

const IDLE: Duration = Duration::from_secs(30 * 60);
const LIFETIME: Duration = Duration::from_secs(2 * 3600);

fn ms(d: Duration) -> Millis {
    d.as_millis() as Millis
}

/// A barrier whose waiters spin instead of sleeping in the kernel, so that
/// the threads it releases start within a fraction of a microsecond of one
/// another: [`Barrier`] wakes its waiters microseconds apart, wider than the
/// few instructions between a renewal's read of the record and its write.
/// Bounded: a waiter gives up after [`MAX_SPINS`] turns.
struct SpinBarrier {
    parties: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    fn new(parties: usize) -> Self {
        SpinBarrier {
            parties,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    /// Waits for every party; `Some(true)` for the one that arrived last,
    /// `None` if the others never came.
    fn wait(&self) -> Option<bool> {
        let generation = self.generation.load(SeqCst);
        if self.arrived.fetch_add(1, SeqCst) + 1 == self.parties {
            self.arrived.store(0, SeqCst);
            self.generation.fetch_add(1, SeqCst);
            return Some(true);
        }
        for turn in 0..MAX_SPINS {
            if self.generation.load(SeqCst) != generation {
                return Some(false);
            }
            if turn % 64 == 63 {
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        None
    }
}

/// The latest deadlines any renewal of the race has handed out.
#[derive(Debug)]
struct Latest {
    expires_at: AtomicU64,
    idle_expires_at: AtomicU64,
}

impl Latest {
    fn new(deadlines: Deadlines) -> Self {
        Latest {
            expires_at: AtomicU64::new(deadlines.expires_at),
            idle_expires_at: AtomicU64::new(deadlines.idle_expires_at),
        }
    }

    fn load(&self) -> Deadlines {
        Deadlines {
            expires_at: self.expires_at.load(SeqCst),
            idle_expires_at: self.idle_expires_at.load(SeqCst),
        }
    }

    fn handed_out(&self, deadlines: Deadlines) {
        self.expires_at.fetch_max(deadlines.expires_at, SeqCst);
        self.idle_expires_at
            .fetch_max(deadlines.idle_expires_at, SeqCst);
    }
}

/// Checks, without renewing it, that the credential's stored idle deadline
/// is not before `promised`: a Resolve that requires a scope it lacks is
/// refused for the scope only while it is live (dead beats a missing
/// scope), and renews nothing. Moves the clock's base to a millisecond
/// before `promised`; read with no offset.
fn still_live_until(
    store: &Store,
    clock: &FakeClock,
    digest: &TokenDigest,
    promised: Millis,
) -> Result<(), String> {
    let to = promised.saturating_sub(1).saturating_sub(clock.now());
    clock.advance(Duration::from_millis(to));
    match store.resolve(digest, Some("not-held")) {
        Err(Rejection::ScopeMissing { .. }) => Ok(()),
        other => Err(format!(
            "a renewal handed out idle_expires_at {promised}, yet a millisecond before it \
             the credential answered {other:?}: its stored deadline fell back"
        )),
    }
}

/// Renewal of one credential from [`RENEWERS`] threads, by Resolve and by
/// Touch in turn, in bursts: the threads are released together and renew
/// once each, reading distinct times (see [`BurstClock`]); then the last to
/// arrive checks, with a probe that does not renew, that the stored
/// deadline is not behind the latest one handed out, and renews it at the
/// probe's time, later than anything before, so the next burst starts live.
///
/// Every answer's `expires_at` and `idle_expires_at` are never behind the
/// same thread's previous answer, nor behind any renewal that had returned
/// before the use began, nor behind the use's own time. At the end of each
/// round the stored deadline is exactly the latest one handed out: live a
/// millisecond before it, dead of idleness at it.
///
/// Catches: renewal with a plain store instead of `fetch_max` (a renewal
/// with an earlier reading writes last and the stored deadline falls behind
/// one already handed out: the probe finds the credential dead early;
/// checked by breaking `Record::renew` so, with and without its
/// same-millisecond shortcut);
/// renewal that answers from a re-read after its write (an answer behind
/// the thread's previous one, or behind another renewal's); renewal that
/// answers `now + lifetime` without `max` when a later use came first.
#[test]
fn concurrent_renewals_never_move_deadlines_back() {
    let mut from_others = 0u64;
    for round in 0..RENEWAL_ROUNDS {
        let context = format!("renewal round {round}");
        let clock = FakeClock::new(START);
        let store = Store::new(
            StoreConfig {
                idle_timeout: IDLE,
                max_lifetime: LIFETIME,
                ..StoreConfig::default()
            },
            Arc::new(BurstClock(clock.clone())),
        );
        let digest = Token::generate().digest();
        let minted = store
            .mint(digest, credential("adapter", "thread", "claude-1"))
            .unwrap();
        let id = minted.credential_id;
        let latest = Arc::new(Latest::new(minted.deadlines));
        let barrier = Arc::new(Barrier::new(RENEWERS));
        let bursts = Arc::new(SpinBarrier::new(RENEWERS));
        // Set with the round's first violation: every thread sees it after
        // the next burst barrier and stops there, so none waits alone.
        let failed = Arc::new(AtomicBool::new(false));
        let renewers: Vec<_> = (0..RENEWERS)
            .map(|w| {
                let (store, clock, barrier, latest) = (
                    store.clone(),
                    clock.clone(),
                    barrier.clone(),
                    latest.clone(),
                );
                let (bursts, failed) = (bursts.clone(), failed.clone());
                let mut previous = minted.deadlines;
                thread::spawn(move || {
                    let mut violations = Violations::default();
                    let mut from_others = 0u64;
                    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1);
                    barrier.wait();
                    for burst in 0..BURSTS {
                        if bursts.wait().is_none() {
                            violations.push(|| format!("burst {burst}: the others never came"));
                            break;
                        }
                        if failed.load(SeqCst) {
                            break;
                        }
                        // A random head start (see JITTER), from a
                        // xorshift of the thread's own seed.
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        for _ in 0..seed % JITTER {
                            std::hint::spin_loop();
                        }
                        // Which thread reads the later time changes with
                        // every burst.
                        let offset = 1 + ((w + burst) % RENEWERS) as Millis;
                        let mine = clock.now() + offset;
                        let floor = latest.load();
                        let by_touch = (w + burst) % 2 == 1;
                        READING_OFFSET.with(|o| o.set(offset));
                        let renewed = if by_touch {
                            store
                                .touch_credential(&id, Reach::All)
                                .map(|touched| touched.deadlines)
                        } else {
                            store.resolve_with(&digest, None, |view| view.deadlines)
                        };
                        READING_OFFSET.with(|o| o.set(0));
                        let how = if by_touch { "Touch" } else { "Resolve" };
                        match renewed {
                            Ok(deadlines) => {
                                let own = Deadlines {
                                    expires_at: mine + ms(LIFETIME),
                                    idle_expires_at: mine + ms(IDLE),
                                };
                                for (what, bound) in [
                                    ("this thread's previous renewal", previous),
                                    ("a renewal that returned before it began", floor),
                                    ("its own use", own),
                                ] {
                                    if deadlines.expires_at < bound.expires_at
                                        || deadlines.idle_expires_at < bound.idle_expires_at
                                    {
                                        violations.push(|| {
                                            format!(
                                                "burst {burst}: {how} answered {deadlines:?}, \
                                                 behind {what}: {bound:?}"
                                            )
                                        });
                                    }
                                }
                                if deadlines.idle_expires_at > deadlines.expires_at {
                                    violations.push(|| format!("{how} answered {deadlines:?}"));
                                }
                                // Later than its own use: another thread's
                                // renewal of this burst came first.
                                from_others +=
                                    u64::from(deadlines.idle_expires_at > own.idle_expires_at);
                                previous = deadlines;
                                latest.handed_out(deadlines);
                            }
                            Err(rejection) => {
                                violations.push(|| {
                                    format!("burst {burst}: {how} refused: {rejection:?}")
                                });
                            }
                        }
                        if violations.count > 0 {
                            failed.store(true, SeqCst);
                        }
                        let Some(leader) = bursts.wait() else {
                            violations.push(|| format!("burst {burst}: the others never came"));
                            break;
                        };
                        if leader {
                            // The others wait at the next burst's barrier.
                            let promised = latest.load().idle_expires_at;
                            if let Err(message) =
                                still_live_until(&store, &clock, &digest, promised)
                            {
                                violations.push(|| format!("after burst {burst}: {message}"));
                            }
                            match store.resolve_with(&digest, None, |view| view.deadlines) {
                                Ok(deadlines) => latest.handed_out(deadlines),
                                Err(rejection) => violations.push(|| {
                                    format!(
                                        "after burst {burst}: the probe's renewal: {rejection:?}"
                                    )
                                }),
                            }
                            if violations.count > 0 {
                                failed.store(true, SeqCst);
                            }
                        }
                    }
                    (violations, from_others)
                })
            })
            .collect();
        let mut violations = Violations::default();
        for renewer in renewers {
            let (v, others) = renewer.join().unwrap();
            violations.absorb(v);
            from_others += others;
        }
        violations.assert_none(&context);
        // The probe's renewal after the last burst was the latest use.
        let last_use = clock.now();
        let handed_out = latest.load();
        assert_eq!(
            handed_out,
            Deadlines {
                expires_at: last_use + ms(LIFETIME),
                idle_expires_at: last_use + ms(IDLE),
            },
            "{context}: the latest deadlines handed out follow the latest use"
        );
        // Exactly the latest deadline: live a millisecond before, dead at it.
        still_live_until(&store, &clock, &digest, handed_out.idle_expires_at)
            .unwrap_or_else(|message| panic!("{context}: {message}"));
        clock.advance(Duration::from_millis(1));
        match store.resolve(&digest, Some("not-held")) {
            Err(Rejection::Dead(dead)) => assert_eq!(
                (dead.credential_id, dead.reason),
                (id, DeathReason::IdleTimeout),
                "{context}"
            ),
            other => panic!(
                "{context}: the stored deadline is after {}: {other:?}",
                handed_out.idle_expires_at
            ),
        }
    }
    if parallel() {
        assert!(
            from_others > 0,
            "no renewal answered with another thread's later use in {RENEWAL_ROUNDS} rounds"
        );
    }
}

/// Workers mint, RevokeAll their instance and RevokeThread at once; every
/// credential minted is counted by exactly one revocation (the ones the
/// workers made, or a last RevokeAll of everything), and the thread lists
/// and budgets agree with the records afterwards. The workers' spans,
/// ticketed from one sequence, must overlap, or the round proved nothing.
///
/// Catches: live counts changed outside the revocation lock, so that a
/// credential removed by RevokeThread is also counted by a racing RevokeAll
/// (or by none); a Mint that counts its record after linking it, racing a
/// RevokeAll; thread lists or budgets left inconsistent by racing
/// insertions and removals.
#[test]
fn racing_mints_and_revocations_count_every_credential_once() {
    const WORKERS: usize = 4;
    const MINTS: usize = 2_000;
    let (store, _clock) = fake_store(StoreConfig::default());
    let sequence = Arc::new(AtomicU64::new(1));
    let barrier = Arc::new(Barrier::new(WORKERS));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (store, sequence, barrier) = (store.clone(), sequence.clone(), barrier.clone());
            thread::spawn(move || {
                let instance = format!("i{w}");
                barrier.wait();
                let began = sequence.fetch_add(1, SeqCst);
                let mut revoked = 0;
                for i in 0..MINTS {
                    let thread_id = format!("t{}", i % 50);
                    mint_as(&store, "adapter", &thread_id, &instance);
                    if i % 97 == 0 {
                        revoked += store.revoke_all(RevokeAllTarget::Instance(&instance));
                    }
                    if i % 89 == 0 {
                        revoked += store.revoke_thread(&thread_id, Reach::All).revoked;
                    }
                }
                let ended = sequence.fetch_add(1, SeqCst);
                (revoked, began, ended)
            })
        })
        .collect();
    let spans: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let last_began = spans.iter().map(|s| s.1).max().unwrap();
    let first_ended = spans.iter().map(|s| s.2).min().unwrap();
    assert!(
        last_began < first_ended,
        "every worker was running at one instant"
    );
    let revoked: u64 = spans.iter().map(|s| s.0).sum();
    let remaining = store.revoke_all(RevokeAllTarget::Everything);
    assert_eq!(revoked + remaining, (WORKERS * MINTS) as u64);
    store.sweep();
    consistent(&store);
    assert_eq!(store.record_count(), 0);
}
