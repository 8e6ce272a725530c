//! The embedded in-memory credential store.
//!
//! Shaped after mini-redis's `Db`: [`Store`] is a cheap-to-clone handle over
//! `Arc<Shared>`, and a background sweeper (started by [`Store::spawn_sweeper`]
//! and stopped when its [`SweeperGuard`] drops) removes dead credentials.
//! Unlike mini-redis, no expiry index is touched on the hot path:
//!
//! - Records live in a sharded map keyed by the token's digest. Resolve takes
//!   one shard's read lock and renews the record with atomics; it never takes a
//!   lock shared by all credentials.
//! - Revoke-all is a generation bump: a record minted at generation `g` of its
//!   provider instance is dead once the instance's generation is above `g`.
//!   Revoking everything bumps every provider instance (adapters, a handful),
//!   so neither costs time per credential; the sweeper removes such records
//!   lazily, when their queued deadline falls due.
//! - The sweeper's deadline queue is written by Mint and the sweeper only. A
//!   renewal does not move the queued entry: when an entry falls due, the
//!   sweeper re-reads the record and re-queues it if its deadline slid. So the
//!   sweeper's cost grows with what falls due, not with what is live.
//! - A dead credential leaves a tombstone (bounded by age and count) so that
//!   Resolve can say `TOKEN_REVOKED` or `TOKEN_EXPIRED` rather than
//!   `TOKEN_UNKNOWN`.
//! - Two small indexes serve the owner's calls: thread id -> digests
//!   (RevokeThread, Touch by thread, rotation) and credential id -> digest
//!   (RevokeCredential, Touch by id). Resolve touches neither.
//!
//! The store never sees a token: it is keyed by [`TokenDigest`].

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use nohash_hasher::BuildNoHashHasher;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use crate::clock::{Clock, Millis};
use crate::token::{CredentialId, TokenDigest};

/// How many due deadlines the sweeper handles per lock of the queue, so that a
/// mass expiry never holds the queue (and so Mint) for long and the sweeper
/// yields to RPC work between batches.
const SWEEP_BATCH: usize = 1024;

/// Shards of the record map. Resolve takes one shard's read lock, whose
/// counter is a cache line written by every reader of that shard: with many
/// shards, two cores rarely write the same one.
const RECORD_SHARDS: usize = 256;

/// The longest the sweeper sleeps without re-checking, as a safety net against
/// a missed wake-up.
const MAX_SWEEPER_SLEEP: Duration = Duration::from_secs(60);

/// A map keyed by token digest. Digests are uniform already, so the map uses
/// their first 8 bytes as the hash instead of SipHash (see [`TokenDigest`]).
type DigestMap<V> = DashMap<TokenDigest, V, BuildNoHashHasher<u64>>;

/// The limits the store enforces, fixed when it starts.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How long a credential may go unused before it dies (default and upper
    /// bound of a per-credential override).
    pub idle_timeout: Duration,
    /// How far each use pushes `expires_at` ahead: the backstop for unused
    /// credentials (default and upper bound of a per-credential override).
    pub max_lifetime: Duration,
    /// An optional hard limit counted from mint time that renewal never
    /// passes.
    pub absolute_lifetime: Option<Duration>,
    /// How long a dead credential's tombstone is kept.
    pub tombstone_retention: Duration,
    /// How many tombstones are kept at most; the oldest go first.
    pub tombstone_capacity: usize,
}

impl Default for StoreConfig {
    /// The defaults of the reference registry: 30 minutes idle, 30 days max
    /// lifetime, no absolute lifetime; tombstones for 24 hours.
    fn default() -> Self {
        StoreConfig {
            idle_timeout: Duration::from_secs(30 * 60),
            max_lifetime: Duration::from_secs(30 * 24 * 60 * 60),
            absolute_lifetime: None,
            tombstone_retention: Duration::from_secs(24 * 60 * 60),
            tombstone_capacity: 1_000_000,
        }
    }
}

/// What Mint needs to know about the new credential, already validated.
#[derive(Debug, Clone, Default)]
pub struct NewCredential<'a> {
    /// The session thread the credential belongs to.
    pub thread_id: &'a str,
    /// The provider adapter instance that runs the session.
    pub provider_instance_id: &'a str,
    /// An optional provider label ("claude", "codex", ...).
    pub provider_kind: Option<&'a str>,
    /// A per-credential idle timeout; clamped to the store's.
    pub idle_timeout: Option<Duration>,
    /// A per-credential max lifetime; clamped to the store's.
    pub max_lifetime: Option<Duration>,
    /// Revoke every earlier live credential of the same thread and provider
    /// instance in the same atomic step.
    pub replace_previous: bool,
    /// What the credential may do.
    pub scopes: Scopes,
    /// Free-form context returned by Resolve.
    pub labels: Labels,
}

/// A credential's scopes, shared between the record and every Resolve answer.
pub type Scopes = Arc<[Box<str>]>;

/// A credential's labels (key, value), sorted by key, shared like [`Scopes`].
pub type Labels = Arc<[(Box<str>, Box<str>)]>;

/// The deadlines of a credential as of its mint or latest renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// When it dies even if used (slides forward on each use).
    pub expires_at: Millis,
    /// When it dies if not used again; never after `expires_at`.
    pub idle_expires_at: Millis,
}

/// A newly minted credential's public facts.
#[derive(Debug, Clone)]
pub struct Minted {
    /// The non-secret handle.
    pub credential_id: CredentialId,
    /// The deadlines it starts with.
    pub deadlines: Deadlines,
    /// How many earlier credentials `replace_previous` revoked.
    pub replaced: u64,
}

/// A credential renewed by Touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Touched {
    /// The non-secret handle.
    pub credential_id: CredentialId,
    /// The deadlines after the renewal.
    pub deadlines: Deadlines,
}

/// Who a live credential belongs to, as a successful Resolve sees it:
/// borrowed from the record, so answering copies the strings once into the
/// response and touches no reference count shared with other credentials.
#[derive(Debug, Clone, Copy)]
pub struct CredentialView<'a> {
    /// The non-secret handle.
    pub credential_id: CredentialId,
    /// The thread it was minted for.
    pub thread_id: &'a str,
    /// The provider instance it was minted for.
    pub provider_instance_id: &'a str,
    /// The provider label given at mint time.
    pub provider_kind: Option<&'a str>,
    /// When it was minted.
    pub created_at: Millis,
    /// The deadlines after this use renewed them.
    pub deadlines: Deadlines,
    /// What it may do.
    pub scopes: &'a [Box<str>],
    /// Its labels, sorted by key.
    pub labels: &'a [(Box<str>, Box<str>)],
}

/// An owned copy of a [`CredentialView`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The non-secret handle.
    pub credential_id: CredentialId,
    /// The thread it was minted for.
    pub thread_id: String,
    /// The provider instance it was minted for.
    pub provider_instance_id: String,
    /// The provider label given at mint time.
    pub provider_kind: Option<String>,
    /// When it was minted.
    pub created_at: Millis,
    /// The deadlines after this use renewed them.
    pub deadlines: Deadlines,
    /// What it may do.
    pub scopes: Vec<String>,
    /// Its labels, sorted by key.
    pub labels: Vec<(String, String)>,
}

impl From<CredentialView<'_>> for Resolved {
    fn from(view: CredentialView<'_>) -> Self {
        Resolved {
            credential_id: view.credential_id,
            thread_id: view.thread_id.to_owned(),
            provider_instance_id: view.provider_instance_id.to_owned(),
            provider_kind: view.provider_kind.map(str::to_owned),
            created_at: view.created_at,
            deadlines: view.deadlines,
            scopes: view.scopes.iter().map(|s| s.to_string()).collect(),
            labels: view
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

/// Which revocation killed a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationCause {
    /// RevokeThread for its thread.
    Thread,
    /// RevokeAll for its provider instance.
    ProviderInstance,
    /// RevokeAll for every credential.
    All,
    /// RevokeCredential for this one credential.
    Credential,
    /// A Mint with `replace_previous` for the same thread and instance.
    Replaced,
}

impl RevocationCause {
    /// The stable name used in `ErrorInfo` metadata and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationCause::Thread => "thread",
            RevocationCause::ProviderInstance => "provider_instance",
            RevocationCause::All => "all",
            RevocationCause::Credential => "credential",
            RevocationCause::Replaced => "replaced",
        }
    }
}

/// Why a credential can never work again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    /// `expires_at` passed (max lifetime without use, or absolute lifetime).
    Expired,
    /// It went unused for its idle timeout.
    IdleTimeout,
    /// It was revoked.
    Revoked(RevocationCause),
}

/// A credential that is known and dead.
#[derive(Debug, Clone)]
pub struct DeadCredential {
    /// Why it died.
    pub reason: DeathReason,
    /// Its non-secret handle.
    pub credential_id: CredentialId,
    /// The thread it was minted for.
    pub thread_id: Arc<str>,
}

/// Why Resolve refused a digest.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Rejection {
    /// Never minted here, or dead for longer than the tombstone retention.
    #[error("unknown credential")]
    Unknown,
    /// Known and dead.
    #[error("dead credential {}: {:?}", .0.credential_id, .0.reason)]
    Dead(DeadCredential),
    /// Live, but without the scope the caller required. Not terminal.
    #[error("credential {credential_id} lacks scope {scope:?}")]
    ScopeMissing {
        /// Its non-secret handle.
        credential_id: CredentialId,
        /// The thread it was minted for.
        thread_id: Arc<str>,
        /// The scope that was required.
        scope: Box<str>,
    },
}

/// The cheap-to-clone handle to the store shared by every RPC.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

/// Stops the sweeper when dropped: the server holds it for as long as it runs.
pub struct SweeperGuard {
    shared: Arc<Shared>,
}

struct Shared {
    clock: Arc<dyn Clock>,
    limits: Limits,
    records: DigestMap<Record>,
    /// Thread id -> digests of its credentials, for RevokeThread. Its key is
    /// shared with the records (`Record::thread_id`), so the id is stored once.
    threads: DashMap<Arc<str>, Vec<TokenDigest>>,
    /// Provider instance id -> its generation and live count, for RevokeAll.
    instances: DashMap<Arc<str>, Arc<Instance>>,
    /// The interned classes records point to.
    classes: DashMap<Arc<Class>, ()>,
    /// Credential id -> digest, for the owner's calls by id. An entry lives
    /// as long as the record or its tombstone, so a dead credential's reason
    /// stays known by id too.
    credentials: DashMap<CredentialId, TokenDigest>,
    /// Makes "read the generations and count the credential" (Mint, removal)
    /// atomic with respect to "bump a generation and take the count"
    /// (RevokeAll). Never taken by Resolve, which reads the generations alone.
    generation_lock: RwLock<()>,
    /// Min-heap of (deadline, digest); entries may be stale (see module docs).
    deadlines: Mutex<BinaryHeap<Reverse<Deadline>>>,
    tombstones: Tombstones,
    /// When the sweeper will next wake on its own; Mint wakes it earlier only
    /// when it queues an earlier deadline.
    sweeper_wakes_at: AtomicU64,
    sweeper_wakeup: Notify,
    shutdown: AtomicBool,
}

/// The store's limits in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Limits {
    idle_timeout: Millis,
    max_lifetime: Millis,
    absolute_lifetime: Option<Millis>,
    tombstone_retention: Millis,
    tombstone_capacity: usize,
}

/// One provider instance: its revocation generation and how many records of
/// the current generation it has (what RevokeAll reports as revoked).
struct Instance {
    id: Arc<str>,
    /// Read by every Resolve; written only by RevokeAll.
    generation: AtomicU64,
    /// Written by every Mint and removal: kept off the generation's cache
    /// line so those writes do not slow Resolve down on other cores.
    live: CachePadded<AtomicU64>,
    /// `causes[g]` is the revocation that ended generation `g`, so a record
    /// reports the first revocation that hit it. Read only on failures.
    causes: Mutex<Vec<RevocationCause>>,
}

impl Instance {
    /// Ends the current generation; returns how many records it had.
    /// Called with the generation lock held for writing.
    fn revoke(&self, cause: RevocationCause) -> u64 {
        // The cause is in place before a Resolve can see the new generation.
        self.causes.lock().push(cause);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.live.swap(0, Ordering::AcqRel)
    }

    /// The revocation that ended `generation`.
    fn cause_of(&self, generation: u64) -> RevocationCause {
        let causes = self.causes.lock();
        usize::try_from(generation)
            .ok()
            .and_then(|g| causes.get(g).copied())
            .unwrap_or(RevocationCause::All)
    }
}

/// What many credentials have in common: the provider instance, kind,
/// scopes, labels and lifetimes they were minted with. Interned, so each
/// record holds one pointer instead of its own copies, and Resolve reads it
/// from a cache line that stays hot.
struct Class {
    instance: Arc<Instance>,
    provider_kind: Option<Box<str>>,
    scopes: Scopes,
    labels: Labels,
    idle_timeout: Millis,
    max_lifetime: Millis,
    /// `Millis::MAX` when the store has no absolute lifetime.
    absolute_lifetime: Millis,
}

impl PartialEq for Class {
    fn eq(&self, other: &Self) -> bool {
        self.instance.id == other.instance.id
            && self.provider_kind == other.provider_kind
            && self.scopes == other.scopes
            && self.labels == other.labels
            && self.idle_timeout == other.idle_timeout
            && self.max_lifetime == other.max_lifetime
            && self.absolute_lifetime == other.absolute_lifetime
    }
}

impl Eq for Class {}

impl Hash for Class {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.instance.id.hash(state);
        self.provider_kind.hash(state);
        self.scopes.hash(state);
        self.labels.hash(state);
        self.idle_timeout.hash(state);
        self.max_lifetime.hash(state);
    }
}

/// A credential. Everything but `last_used` is fixed at mint.
///
/// Both deadlines follow from the latest use: `expires_at` is
/// `max(expires_at, now + max_lifetime)` after every use, which is
/// `last_used + max_lifetime` since `last_used` only grows (mint counts as
/// the first use). So a renewal writes one atomic, and only when the
/// millisecond changed.
struct Record {
    credential_id: CredentialId,
    thread_id: Arc<str>,
    class: Arc<Class>,
    instance_generation: u64,
    created_at: Millis,
    last_used: AtomicU64,
}

impl Record {
    /// The deadlines that follow from a latest use at `last_used`.
    fn deadlines_after(&self, last_used: Millis) -> Deadlines {
        let class = &*self.class;
        let expires_at = last_used
            .saturating_add(class.max_lifetime)
            .min(self.created_at.saturating_add(class.absolute_lifetime));
        Deadlines {
            expires_at,
            idle_expires_at: last_used.saturating_add(class.idle_timeout).min(expires_at),
        }
    }

    /// Why this record is dead at `now`, if it is. The first deadline that
    /// passed names the reason.
    fn death(&self, now: Millis) -> Option<DeathReason> {
        if !self.counted() {
            let cause = self.class.instance.cause_of(self.instance_generation);
            return Some(DeathReason::Revoked(cause));
        }
        let last_used = self.last_used.load(Ordering::Acquire);
        let expires_at = self.deadlines_after(last_used).expires_at;
        let idle_deadline = last_used.saturating_add(self.class.idle_timeout);
        if now < idle_deadline.min(expires_at) {
            None
        } else if idle_deadline < expires_at {
            Some(DeathReason::IdleTimeout)
        } else {
            Some(DeathReason::Expired)
        }
    }

    /// The deadlines as of the latest use.
    fn deadlines(&self) -> Deadlines {
        self.deadlines_after(self.last_used.load(Ordering::Acquire))
    }

    /// Sliding renewal on use: the idle clock restarts and `expires_at` moves
    /// to `max(expires_at, now + max_lifetime)`, never past the absolute
    /// deadline and never backwards. A use in the same millisecond as the
    /// latest one writes nothing, so a hot credential's cache line is not
    /// bounced between cores by every call.
    fn renew(&self, now: Millis) -> Deadlines {
        let previous = self.last_used.load(Ordering::Acquire);
        let latest = if now > previous {
            self.last_used.fetch_max(now, Ordering::AcqRel).max(now)
        } else {
            previous
        };
        self.deadlines_after(latest)
    }

    /// One use at `now` (a Resolve, or a Touch when `required_scope` is
    /// `None`): refused if dead or lacking the scope, else renewed.
    fn use_at(&self, now: Millis, required_scope: Option<&str>) -> Result<Deadlines, Rejection> {
        if let Some(reason) = self.death(now) {
            return Err(Rejection::Dead(self.dead(reason)));
        }
        if let Some(scope) = required_scope {
            if !self.class.scopes.iter().any(|held| **held == *scope) {
                return Err(Rejection::ScopeMissing {
                    credential_id: self.credential_id,
                    thread_id: self.thread_id.clone(),
                    scope: scope.into(),
                });
            }
        }
        Ok(self.renew(now))
    }

    fn dead(&self, reason: DeathReason) -> DeadCredential {
        DeadCredential {
            reason,
            credential_id: self.credential_id,
            thread_id: self.thread_id.clone(),
        }
    }

    /// Whether the record belongs to its instance's current generation: not
    /// revoked by RevokeAll, and included in the instance's live count.
    fn counted(&self) -> bool {
        self.class.instance.generation.load(Ordering::Acquire) == self.instance_generation
    }
}

/// A queued sweeper deadline, ordered by time only.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Millis,
    digest: TokenDigest,
}

impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Deadline {}

impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        self.at.cmp(&other.at)
    }
}

/// Dead credentials remembered for a while, so failures stay precise.
struct Tombstones {
    by_digest: DigestMap<DeadCredential>,
    /// Insertion order, for eviction by age and count. Each digest appears
    /// once: a digest is only queued when it was newly inserted above.
    order: Mutex<VecDeque<(Millis, TokenDigest)>>,
}

impl Tombstones {
    /// Remembers a death. The first recorded reason wins: it is when the
    /// credential actually died. Tombstones pushed out by the count limit
    /// take their credential-index entries with them.
    fn record(
        &self,
        digest: TokenDigest,
        dead: DeadCredential,
        now: Millis,
        limits: &Limits,
        credentials: &DashMap<CredentialId, TokenDigest>,
    ) {
        if limits.tombstone_capacity == 0 {
            return;
        }
        match self.by_digest.entry(digest) {
            Entry::Occupied(_) => return,
            Entry::Vacant(vacant) => {
                vacant.insert(dead);
            }
        }
        let mut order = self.order.lock();
        order.push_back((now, digest));
        while order.len() > limits.tombstone_capacity {
            if let Some((_, oldest)) = order.pop_front() {
                self.forget(&oldest, credentials);
            }
        }
    }

    /// Forgets tombstones recorded at or before `cutoff`.
    fn evict_older_than(&self, cutoff: Millis, credentials: &DashMap<CredentialId, TokenDigest>) {
        let mut order = self.order.lock();
        while let Some(&(at, digest)) = order.front() {
            if at > cutoff {
                return;
            }
            order.pop_front();
            self.forget(&digest, credentials);
        }
    }

    fn forget(&self, digest: &TokenDigest, credentials: &DashMap<CredentialId, TokenDigest>) {
        if let Some((_, tombstone)) = self.by_digest.remove(digest) {
            credentials.remove(&tombstone.credential_id);
        }
    }

    fn get(&self, digest: &TokenDigest) -> Option<DeadCredential> {
        self.by_digest.get(digest).map(|dead| dead.clone())
    }
}

/// What [`Shared::retire`] did with one digest.
enum Retired {
    /// No record under that digest (already removed).
    Absent,
    /// The record is live and was not asked to be revoked; it can next die at
    /// the given instant.
    StillLive(Millis),
    /// Removed a record that was live until now (a revocation).
    RevokedLive,
    /// Removed a record that was already dead.
    RemovedDead,
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Dead records removed.
    pub removed: usize,
    /// Live records whose deadline had slid and were queued again.
    pub requeued: usize,
}

impl Store {
    /// A store with the given limits and clock. No sweeper runs until
    /// [`Store::spawn_sweeper`]; tests drive [`Store::sweep`] by hand.
    pub fn new(config: StoreConfig, clock: Arc<dyn Clock>) -> Self {
        let millis = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as Millis;
        let limits = Limits {
            idle_timeout: millis(config.idle_timeout),
            max_lifetime: millis(config.max_lifetime),
            absolute_lifetime: config.absolute_lifetime.map(millis),
            tombstone_retention: millis(config.tombstone_retention),
            tombstone_capacity: config.tombstone_capacity,
        };
        Store {
            shared: Arc::new(Shared {
                clock,
                limits,
                records: DashMap::with_hasher_and_shard_amount(
                    BuildNoHashHasher::default(),
                    RECORD_SHARDS,
                ),
                threads: DashMap::new(),
                instances: DashMap::new(),
                classes: DashMap::new(),
                credentials: DashMap::new(),
                generation_lock: RwLock::new(()),
                deadlines: Mutex::new(BinaryHeap::new()),
                tombstones: Tombstones {
                    by_digest: DashMap::with_hasher(BuildNoHashHasher::default()),
                    order: Mutex::new(VecDeque::new()),
                },
                sweeper_wakes_at: AtomicU64::new(Millis::MAX),
                sweeper_wakeup: Notify::new(),
                shutdown: AtomicBool::new(false),
            }),
        }
    }

    /// Starts the background sweeper on the current tokio runtime. It runs
    /// until the returned guard is dropped.
    pub fn spawn_sweeper(&self) -> SweeperGuard {
        let shared = self.shared.clone();
        tokio::spawn(sweeper_task(shared));
        SweeperGuard {
            shared: self.shared.clone(),
        }
    }

    /// Stores a new credential under `digest` (the digest of a freshly
    /// generated token). With `replace_previous`, the earlier live credentials
    /// of the same thread and provider instance are revoked under the thread's
    /// index lock before the new record becomes visible, so the two never
    /// work at the same time and concurrent rotations of one thread serialise.
    pub fn mint(&self, digest: TokenDigest, new: NewCredential<'_>) -> Minted {
        let shared = &*self.shared;
        let limits = &shared.limits;
        let now = shared.clock.now();
        let class = shared.class(Class {
            instance: shared.instance(new.provider_instance_id),
            provider_kind: new.provider_kind.map(Box::from),
            scopes: new.scopes,
            labels: new.labels,
            idle_timeout: clamp_override(new.idle_timeout, limits.idle_timeout),
            max_lifetime: clamp_override(new.max_lifetime, limits.max_lifetime),
            absolute_lifetime: limits.absolute_lifetime.unwrap_or(Millis::MAX),
        });
        let instance = &class.instance;
        let thread_id = shared
            .threads
            .get(new.thread_id)
            .map_or_else(|| Arc::from(new.thread_id), |entry| entry.key().clone());
        let instance_generation = {
            let _counting = shared.generation_lock.read();
            instance.live.fetch_add(1, Ordering::AcqRel);
            instance.generation.load(Ordering::Acquire)
        };
        let credential_id = CredentialId::generate();
        let record = Record {
            credential_id,
            thread_id: thread_id.clone(),
            class,
            instance_generation,
            created_at: now,
            last_used: AtomicU64::new(now),
        };
        let deadlines = record.deadlines();
        shared.credentials.insert(credential_id, digest);
        let replaced = if new.replace_previous {
            let mut digests = shared.threads.entry(thread_id).or_default();
            let mut replaced = 0;
            digests.retain(|earlier| {
                let same_instance = shared
                    .records
                    .get(earlier)
                    .is_some_and(|r| *r.class.instance.id == *new.provider_instance_id);
                if !same_instance {
                    return true;
                }
                let (outcome, removed) =
                    shared.retire(earlier, now, Some(RevocationCause::Replaced));
                if let Some(removed) = removed {
                    // The thread index entry is dropped by `retain` itself:
                    // its shard is locked here.
                    shared.forget(earlier, removed, false);
                }
                if let Retired::RevokedLive = outcome {
                    replaced += 1;
                }
                false
            });
            shared.records.insert(digest, record);
            digests.push(digest);
            replaced
        } else {
            // Record first, index second: a concurrent RevokeThread that
            // misses the index entry then simply happened before this Mint.
            shared.records.insert(digest, record);
            shared.threads.entry(thread_id).or_default().push(digest);
            0
        };
        shared.queue_deadline(deadlines.idle_expires_at, digest);
        Minted {
            credential_id,
            deadlines,
            replaced,
        }
    }

    /// Checks a digest and renews the credential when it is live and holds
    /// `required_scope` (if given); a refused scope leaves it unrenewed.
    /// `answer` reads the renewed credential under its shard's read lock, so
    /// keep it short (copy what the response needs).
    pub fn resolve_with<T>(
        &self,
        digest: &TokenDigest,
        required_scope: Option<&str>,
        answer: impl FnOnce(CredentialView<'_>) -> T,
    ) -> Result<T, Rejection> {
        let shared = &*self.shared;
        let now = shared.clock.now();
        let Some(record) = shared.records.get(digest) else {
            return Err(shared.rejection(digest));
        };
        let deadlines = record.use_at(now, required_scope)?;
        Ok(answer(CredentialView {
            credential_id: record.credential_id,
            thread_id: &record.thread_id,
            provider_instance_id: &record.class.instance.id,
            provider_kind: record.class.provider_kind.as_deref(),
            created_at: record.created_at,
            deadlines,
            scopes: &record.class.scopes,
            labels: &record.class.labels,
        }))
    }

    /// [`Store::resolve_with`], answering with an owned copy.
    pub fn resolve(
        &self,
        digest: &TokenDigest,
        required_scope: Option<&str>,
    ) -> Result<Resolved, Rejection> {
        #[allow(clippy::redundant_closure)] // the closure is generic over the view's lifetime
        self.resolve_with(digest, required_scope, |view| Resolved::from(view))
    }

    /// Renews one credential, by its handle, exactly as a successful Resolve
    /// would. Fails with the reason Resolve would give; never revives.
    pub fn touch_credential(&self, credential_id: &CredentialId) -> Result<Touched, Rejection> {
        let shared = &*self.shared;
        let digest = shared
            .credentials
            .get(credential_id)
            .map(|entry| *entry)
            .ok_or(Rejection::Unknown)?;
        shared.touch(&digest, shared.clock.now())
    }

    /// Renews every live credential of a thread. Fails only when none is
    /// live: with the death of the thread's newest credential, or
    /// [`Rejection::Unknown`] when the thread has none.
    pub fn touch_thread(&self, thread_id: &str) -> Result<Vec<Touched>, Rejection> {
        let shared = &*self.shared;
        let digests = shared
            .threads
            .get(thread_id)
            .map(|entry| entry.clone())
            .ok_or(Rejection::Unknown)?;
        let now = shared.clock.now();
        let mut touched = Vec::with_capacity(digests.len());
        let mut failure = Rejection::Unknown;
        // The index is in mint order, so the last failure is the newest's.
        for digest in &digests {
            match shared.touch(digest, now) {
                Ok(one) => touched.push(one),
                Err(rejection) => failure = rejection,
            }
        }
        if touched.is_empty() {
            Err(failure)
        } else {
            Ok(touched)
        }
    }

    /// Revokes every credential of a thread; returns how many were live.
    pub fn revoke_thread(&self, thread_id: &str) -> u64 {
        let shared = &*self.shared;
        let Some((_, digests)) = shared.threads.remove(thread_id) else {
            return 0;
        };
        let now = shared.clock.now();
        let mut revoked = 0;
        for digest in &digests {
            let (outcome, removed) = shared.retire(digest, now, Some(RevocationCause::Thread));
            if let Some(removed) = removed {
                shared.forget(digest, removed, false);
            }
            if let Retired::RevokedLive = outcome {
                revoked += 1;
            }
        }
        revoked
    }

    /// Revokes one credential by its handle; returns 1 if it was live.
    pub fn revoke_credential(&self, credential_id: &CredentialId) -> u64 {
        let shared = &*self.shared;
        let Some(digest) = shared.credentials.get(credential_id).map(|entry| *entry) else {
            return 0;
        };
        let (outcome, removed) = shared.retire(
            &digest,
            shared.clock.now(),
            Some(RevocationCause::Credential),
        );
        if let Some(removed) = removed {
            shared.forget(&digest, removed, true);
        }
        u64::from(matches!(outcome, Retired::RevokedLive))
    }

    /// Revokes every credential, or those of one provider instance, in
    /// constant time; returns how many credentials were revoked.
    pub fn revoke_all(&self, provider_instance_id: Option<&str>) -> u64 {
        let shared = &*self.shared;
        let _bumping = shared.generation_lock.write();
        match provider_instance_id {
            Some(id) => shared.instances.get(id).map_or(0, |instance| {
                instance.revoke(RevocationCause::ProviderInstance)
            }),
            // One step per provider instance (adapters), not per credential.
            None => shared
                .instances
                .iter()
                .map(|instance| instance.revoke(RevocationCause::All))
                .sum(),
        }
    }

    /// Removes what has died by now (and tombstones past their retention),
    /// all of it, in batches. The background sweeper does the same with
    /// yields between batches.
    pub fn sweep(&self) -> SweepReport {
        let mut total = SweepReport::default();
        loop {
            let (report, more) = self.shared.sweep_batch();
            total.removed += report.removed;
            total.requeued += report.requeued;
            if !more {
                return total;
            }
        }
    }

    /// How many credential records are held, live or dead but not yet swept.
    pub fn record_count(&self) -> usize {
        self.shared.records.len()
    }

    /// How many tombstones are held.
    pub fn tombstone_count(&self) -> usize {
        self.shared.tombstones.by_digest.len()
    }

    /// How many credential ids are indexed (live records and tombstones).
    pub fn indexed_credential_ids(&self) -> usize {
        self.shared.credentials.len()
    }

    /// How many sweeper deadlines are queued (some may be stale).
    pub fn queued_deadlines(&self) -> usize {
        self.shared.deadlines.lock().len()
    }
}

/// A per-credential override, never above the store's limit, and at least
/// 1 ms so that a credential is never born dead.
fn clamp_override(requested: Option<Duration>, limit: Millis) -> Millis {
    requested.map_or(limit, |d| {
        (d.as_millis().min(u128::from(limit)) as Millis).max(1)
    })
}

impl Shared {
    /// The interned copy of `candidate`, which becomes it if none exists.
    fn class(&self, candidate: Class) -> Arc<Class> {
        if let Some(interned) = self.classes.get(&candidate) {
            return interned.key().clone();
        }
        self.classes
            .entry(Arc::new(candidate))
            .or_insert(())
            .key()
            .clone()
    }

    /// The state of a provider instance, created on first use.
    fn instance(&self, id: &str) -> Arc<Instance> {
        if let Some(instance) = self.instances.get(id) {
            return instance.clone();
        }
        let id: Arc<str> = Arc::from(id);
        self.instances
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(Instance {
                    id,
                    generation: AtomicU64::new(0),
                    live: CachePadded::new(AtomicU64::new(0)),
                    causes: Mutex::new(Vec::new()),
                })
            })
            .clone()
    }

    fn queue_deadline(&self, at: Millis, digest: TokenDigest) {
        self.deadlines.lock().push(Reverse(Deadline { at, digest }));
        if at < self.sweeper_wakes_at.load(Ordering::Acquire) {
            self.sweeper_wakeup.notify_one();
        }
    }

    /// Why an absent digest fails: its tombstone's reason, or unknown.
    fn rejection(&self, digest: &TokenDigest) -> Rejection {
        match self.tombstones.get(digest) {
            Some(dead) => Rejection::Dead(dead),
            None => Rejection::Unknown,
        }
    }

    /// Renews the credential under `digest` as a successful Resolve would.
    fn touch(&self, digest: &TokenDigest, now: Millis) -> Result<Touched, Rejection> {
        let Some(record) = self.records.get(digest) else {
            return Err(self.rejection(digest));
        };
        Ok(Touched {
            credential_id: record.credential_id,
            deadlines: record.use_at(now, None)?,
        })
    }

    /// Removes the record under `digest` if it is dead, or if `revoke` is
    /// given, leaving a tombstone. The tombstone is written under the record's
    /// shard lock, before the record disappears, so a Resolve that misses the
    /// record always finds the tombstone. The caller passes a removed record
    /// to [`Shared::forget`].
    fn retire(
        &self,
        digest: &TokenDigest,
        now: Millis,
        revoke: Option<RevocationCause>,
    ) -> (Retired, Option<Record>) {
        let mut outcome = Retired::Absent;
        // Removal and the live count change together with respect to
        // RevokeAll, so a credential is counted by exactly one revocation.
        let _counting = self.generation_lock.read();
        let removed = self.records.remove_if(digest, |_, record| {
            let (reason, was_live) = match (record.death(now), revoke) {
                (Some(reason), _) => (reason, false),
                (None, Some(cause)) => (DeathReason::Revoked(cause), true),
                (None, None) => {
                    outcome = Retired::StillLive(record.deadlines().idle_expires_at);
                    return false;
                }
            };
            self.tombstones.record(
                *digest,
                record.dead(reason),
                now,
                &self.limits,
                &self.credentials,
            );
            outcome = if was_live {
                Retired::RevokedLive
            } else {
                Retired::RemovedDead
            };
            if record.counted() {
                record.class.instance.live.fetch_sub(1, Ordering::AcqRel);
            }
            true
        });
        (outcome, removed.map(|(_, record)| record))
    }

    /// Updates the counts and indexes after the record under `digest` was
    /// removed, dropping index entries that became empty. `unindex_thread` is
    /// false when the caller already took the digest out of the thread index
    /// (and may hold that index's lock).
    fn forget(&self, digest: &TokenDigest, record: Record, unindex_thread: bool) {
        // Without a tombstone (none kept, or pushed out at once) nothing
        // needs the id any more; otherwise the tombstone's eviction drops it.
        if !self.tombstones.by_digest.contains_key(digest) {
            self.credentials.remove(&record.credential_id);
        }
        if unindex_thread {
            let emptied = self
                .threads
                .get_mut(&record.thread_id)
                .is_some_and(|mut digests| {
                    // Cheap: a thread holds a handful of credentials.
                    digests.retain(|d| d != digest);
                    digests.is_empty()
                });
            if emptied {
                self.threads
                    .remove_if(&record.thread_id, |_, digests| digests.is_empty());
            }
        }
        let class = record.class.clone();
        drop(record);
        // Unused classes and instances go: when only the map (and `class`
        // here) hold one, no record refers to it, so an instance's generation
        // no longer matters. Mint clones both under the same shard locks, so
        // it cannot race these checks.
        self.classes
            .remove_if(&*class, |interned, _| Arc::strong_count(interned) == 2);
        let instance_id = class.instance.id.clone();
        drop(class);
        self.instances
            .remove_if(&instance_id, |_, instance| Arc::strong_count(instance) == 1);
    }

    /// Handles one batch of due deadlines. Returns what it did and whether
    /// more are due.
    fn sweep_batch(&self) -> (SweepReport, bool) {
        let now = self.clock.now();
        let mut report = SweepReport::default();
        let due: Vec<Deadline> = {
            let mut queue = self.deadlines.lock();
            let mut due = Vec::new();
            while due.len() < SWEEP_BATCH {
                match queue.peek() {
                    Some(Reverse(next)) if next.at <= now => {
                        due.push(queue.pop().expect("peeked").0);
                    }
                    _ => break,
                }
            }
            due
        };
        let more = due.len() == SWEEP_BATCH;
        let mut requeue = Vec::new();
        for deadline in &due {
            let (outcome, removed) = self.retire(&deadline.digest, now, None);
            if let Some(removed) = removed {
                self.forget(&deadline.digest, removed, true);
            }
            match outcome {
                Retired::StillLive(at) => requeue.push(Reverse(Deadline {
                    at,
                    digest: deadline.digest,
                })),
                Retired::RemovedDead | Retired::RevokedLive => report.removed += 1,
                Retired::Absent => {}
            }
        }
        report.requeued = requeue.len();
        if !requeue.is_empty() {
            self.deadlines.lock().extend(requeue);
        }
        self.tombstones.evict_older_than(
            now.saturating_sub(self.limits.tombstone_retention),
            &self.credentials,
        );
        (report, more)
    }

    /// When the sweeper next has work: the earliest queued deadline or
    /// tombstone expiry.
    fn next_due(&self) -> Option<Millis> {
        let deadline = self.deadlines.lock().peek().map(|Reverse(d)| d.at);
        let tombstone = self.tombstones.order.lock().front().map(|&(at, _)| {
            at.saturating_add(self.limits.tombstone_retention)
                .saturating_add(1)
        });
        match (deadline, tombstone) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Drop for SweeperGuard {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.sweeper_wakeup.notify_one();
    }
}

/// The background sweeper: sweeps what is due in batches, yielding between
/// them, then sleeps until the next deadline or until Mint queues an earlier
/// one.
async fn sweeper_task(shared: Arc<Shared>) {
    while !shared.shutdown.load(Ordering::Acquire) {
        loop {
            let (report, more) = shared.sweep_batch();
            if report.removed > 0 {
                tracing::debug!(
                    removed = report.removed,
                    requeued = report.requeued,
                    "swept"
                );
            }
            if !more {
                break;
            }
            tokio::task::yield_now().await;
        }
        let now = shared.clock.now();
        let sleep = shared.next_due().map_or(MAX_SWEEPER_SLEEP, |at| {
            Duration::from_millis(at.saturating_sub(now)).min(MAX_SWEEPER_SLEEP)
        });
        shared.sweeper_wakes_at.store(
            now.saturating_add(sleep.as_millis() as Millis),
            Ordering::Release,
        );
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = shared.sweeper_wakeup.notified() => {}
        }
    }
}
