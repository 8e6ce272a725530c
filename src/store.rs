//! The embedded in-memory credential store.
//!
//! Shaped after mini-redis's `Db`: [`Store`] is a cheap-to-clone handle over
//! `Arc<Shared>`, and a background sweeper (started by [`Store::spawn_sweeper`]
//! and stopped when its [`SweeperGuard`] drops) removes dead credentials.
//! Unlike mini-redis, no expiry index is touched on the hot path, and the
//! layout is built for Resolve at millions of credentials:
//!
//! - Records live in [`SHARDS`] shards chosen by a digest byte. A shard keeps
//!   its records densely in a slab and finds them through two compact hash
//!   tables of slot numbers (by digest, by credential id), so a record costs
//!   its own bytes plus about ten bytes of index instead of a hash-map slot
//!   sized for the record with half of the slots empty. Resolve takes one
//!   shard's read lock and renews the record with one atomic; it never takes
//!   a lock shared by all credentials. Credential ids carry their shard in
//!   their last byte, so a lookup by id goes straight to it too.
//! - Revoke-all is a generation bump: a record minted at generation `g` of its
//!   provider instance is dead once the instance's generation is above `g`.
//!   Revoking everything bumps every provider instance (adapters, a handful),
//!   so neither costs time per credential; the sweeper removes such records
//!   lazily, when their queued deadline falls due.
//! - Each shard queues its records' deadlines; Mint pushes under the shard
//!   lock it holds anyway, and a renewal does not move the entry: when it
//!   falls due, the sweeper re-reads the record and re-queues it if its
//!   deadline slid. So the sweeper's cost grows with what falls due, not with
//!   what is live, and Resolve never touches a queue.
//! - A thread's credentials form a list through the records (newest first),
//!   headed by an entry in a thread shard. Every insertion and removal of a
//!   record happens under its thread shard's lock, taken before any record
//!   shard lock, and never with two record shard locks held: that order is
//!   what keeps the lists and the shards in step without deadlock.
//! - A dead credential leaves a tombstone (bounded by age and count) so that
//!   Resolve can say `TOKEN_REVOKED` or `TOKEN_EXPIRED` rather than
//!   `TOKEN_UNKNOWN`; it is written before the record goes, under the same
//!   shard lock, so a miss always finds it.
//!
//! The store never sees a token: it is keyed by [`TokenDigest`].

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_utils::CachePadded;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use hashbrown::HashTable;
use nohash_hasher::BuildNoHashHasher;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use crate::clock::{Clock, Millis};
use crate::token::{CredentialId, TokenDigest};

/// Record shards and thread shards. A shard's lock word is a cache line
/// written by every reader of that shard: enough shards that two cores
/// rarely write the same one, few enough that the lock words stay cached
/// (16, 64 and 256 measured alike within noise on 2 cores). At most 256:
/// a credential id routes to its shard with one byte.
const SHARDS: usize = 64;

/// How many due deadlines the sweeper handles per batch, so that a mass
/// expiry never holds a shard (and so Resolve) for long and the sweeper
/// yields to RPC work between batches.
const SWEEP_BATCH: usize = 1024;

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
    /// The records, by a digest byte (see [`shard_of_digest`]).
    records: Box<[CachePadded<RwLock<RecordShard>>]>,
    /// The heads of the threads' credential lists, by thread-id hash.
    threads: Box<[CachePadded<RwLock<ThreadShard>>]>,
    /// Keys the thread-id hash: thread ids come from callers.
    thread_hasher: RandomState,
    /// Provider instance id -> its generation and live count, for RevokeAll.
    instances: DashMap<Arc<str>, Arc<Instance>>,
    /// The interned classes records point to.
    classes: DashMap<Arc<Class>, ()>,
    /// Credential id -> digest of the credentials that have a tombstone, so
    /// the owner's calls by id report a dead credential's reason. Entries go
    /// with their tombstone.
    dead_ids: DashMap<CredentialId, TokenDigest>,
    /// Makes "read the generations and count the credential" (Mint, removal)
    /// atomic with respect to "bump a generation and take the count"
    /// (RevokeAll). Never taken by Resolve, which reads the generations alone.
    generation_lock: RwLock<()>,
    tombstones: Tombstones,
    /// Where the next sweep batch starts, so every shard gets its turn.
    sweep_cursor: AtomicUsize,
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
///
/// Laid out in declaration order: what every Resolve reads (the digest it
/// compares, then the liveness fields) fills the first 64 bytes, so a check
/// touches as few cache lines as the record's position allows.
#[repr(C)]
struct Record {
    digest: TokenDigest,
    last_used: AtomicU64,
    class: Arc<Class>,
    instance_generation: u64,
    created_at: Millis,
    credential_id: CredentialId,
    thread_id: Box<str>,
    /// The thread's next older credential ([`SlotKey::NONE`] for none).
    /// Changed only under the thread's shard lock.
    older: AtomicU32,
    /// The version of the slot holding it (see [`Handle`]); set by
    /// [`RecordShard::insert`]. Fills what would be padding.
    version: u32,
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
                    thread_id: Arc::from(&*self.thread_id),
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
            thread_id: Arc::from(&*self.thread_id),
        }
    }

    /// Whether the record belongs to its instance's current generation: not
    /// revoked by RevokeAll, and included in the instance's live count.
    fn counted(&self) -> bool {
        self.class.instance.generation.load(Ordering::Acquire) == self.instance_generation
    }
}

/// Where a record lives: its shard, its slot and the slot's version, packed
/// in 64 bits. The version changes when the slot is freed, so a handle left
/// in a deadline queue never reaches the slot's next occupant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Handle(u64);

impl Handle {
    /// Slots per shard that a handle can address.
    const MAX_SLOTS: usize = (1 << 24) - 1;

    fn new(shard: usize, slot: u32, version: u32) -> Self {
        Handle(((shard as u64) << 56) | (u64::from(slot) << 32) | u64::from(version))
    }

    fn shard(self) -> usize {
        (self.0 >> 56) as usize
    }

    fn slot(self) -> u32 {
        ((self.0 >> 32) & 0x00FF_FFFF) as u32
    }

    fn version(self) -> u32 {
        self.0 as u32
    }

    /// The shard and slot without the version.
    fn key(self) -> SlotKey {
        SlotKey(((self.shard() as u32) << 24) | self.slot())
    }
}

/// A shard and slot without the slot's version: what a thread's list holds.
/// Under the thread's shard lock the list is exact (every record's removal
/// takes it), so no version is needed, and a link costs 4 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SlotKey(u32);

impl SlotKey {
    /// The end of a list: shard 255, slot 2^24 - 1, which never exist
    /// ([`SHARDS`] is 64 and [`Handle::MAX_SLOTS`] stops one short).
    const NONE: SlotKey = SlotKey(u32::MAX);

    fn shard(self) -> usize {
        (self.0 >> 24) as usize
    }

    fn slot(self) -> u32 {
        self.0 & 0x00FF_FFFF
    }

    fn is_none(self) -> bool {
        self == SlotKey::NONE
    }
}

/// The record shard of a digest: a byte the in-shard hash does not use.
fn shard_of_digest(digest: &TokenDigest) -> usize {
    usize::from(digest.as_bytes()[8]) % SHARDS
}

/// The in-shard hash of a digest (uniform already): its first 8 bytes.
fn digest_hash(digest: &TokenDigest) -> u64 {
    leading_word(digest.as_bytes())
}

/// The in-shard hash of a credential id (random bytes already): its first
/// 8 bytes.
fn credential_hash(id: &CredentialId) -> u64 {
    leading_word(id.as_bytes())
}

fn leading_word(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

/// Records per slab chunk (104 KiB). A chunk's buffer is reserved whole and
/// filled in place, never moved or freed, so the slab grows without copying
/// and without leaving the freed halves of doubled buffers behind as
/// resident garbage; pages not yet filled are not resident.
const CHUNK: usize = 1024;

/// The records of one shard, densely, by slot number.
#[derive(Default)]
struct Slab {
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
    fn at(&self, slot: u32) -> Option<&Record> {
        let slot = slot as usize;
        self.chunks.get(slot / CHUNK)?.get(slot % CHUNK)?.as_ref()
    }

    /// Stores `record` in a free or new slot; returns the slot.
    fn insert(&mut self, mut record: Record) -> u32 {
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
    fn take(&mut self, slot: u32) -> Option<Record> {
        let record = self.chunks[slot as usize / CHUNK][slot as usize % CHUNK].take()?;
        self.free
            .push((slot, record.version.checked_add(1).unwrap_or(1)));
        Some(record)
    }

    fn len(&self) -> usize {
        self.allocated as usize - self.free.len()
    }
}

/// One shard of records: a slab and its indexes and deadline queue.
#[derive(Default)]
struct RecordShard {
    slab: Slab,
    /// Slot numbers by digest; the digest itself is in the record.
    by_digest: SlotIndex,
    /// Slot numbers by credential id; the id itself is in the record.
    by_credential: SlotIndex,
    /// Min-heap of (deadline, handle); entries may be stale (see module docs).
    deadlines: BinaryHeap<Reverse<Deadline>>,
}

impl RecordShard {
    /// The record in `slot`, if the slot is in use.
    fn at(&self, slot: u32) -> Option<&Record> {
        self.slab.at(slot)
    }

    /// The slot of the record under `digest`.
    fn digest_slot(&self, digest: &TokenDigest) -> Option<u32> {
        self.by_digest.find(digest_hash(digest), |slot| {
            self.at(slot).is_some_and(|record| record.digest == *digest)
        })
    }

    /// The slot of the record with credential id `id`.
    fn credential_slot(&self, id: &CredentialId) -> Option<u32> {
        self.by_credential.find(credential_hash(id), |slot| {
            self.at(slot)
                .is_some_and(|record| record.credential_id == *id)
        })
    }

    /// The handle of an occupied slot of shard number `shard`.
    fn handle(&self, shard: usize, slot: u32) -> Handle {
        Handle::new(shard, slot, self.at(slot).map_or(0, |r| r.version))
    }

    /// The record `handle` names, if it is still there.
    fn get(&self, handle: Handle) -> Option<&Record> {
        self.at(handle.slot())
            .filter(|record| record.version == handle.version())
    }

    fn insert(&mut self, shard: usize, record: Record) -> Handle {
        let (digest, credential) = (
            digest_hash(&record.digest),
            credential_hash(&record.credential_id),
        );
        let slot = self.slab.insert(record);
        let slab = &self.slab;
        self.by_digest.insert(digest, slot, |s| {
            slab.at(s).map_or(0, |r| digest_hash(&r.digest))
        });
        self.by_credential.insert(credential, slot, |s| {
            slab.at(s).map_or(0, |r| credential_hash(&r.credential_id))
        });
        self.handle(shard, slot)
    }

    /// Takes the record `handle` names out of the shard and frees its slot.
    fn remove(&mut self, handle: Handle) -> Option<Record> {
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

    fn len(&self) -> usize {
        self.slab.len()
    }
}

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
struct SlotIndex {
    entries: Vec<u32>,
    len: usize,
}

impl SlotIndex {
    /// Entries per table at most, as a fraction of its size.
    const MAX_LOAD_PERCENT: usize = 80;

    fn tag(hash: u64) -> u32 {
        (hash >> 56) as u32
    }

    fn home(&self, hash: u64) -> usize {
        hash as usize & (self.entries.len() - 1)
    }

    /// The slot for which `matches` holds among the entries with `hash`'s tag.
    fn find(&self, hash: u64, mut matches: impl FnMut(u32) -> bool) -> Option<u32> {
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
    fn insert(&mut self, hash: u64, slot: u32, hash_of: impl Fn(u32) -> u64) {
        if (self.len + 1) * 100 > self.entries.len() * Self::MAX_LOAD_PERCENT {
            let size = (self.entries.len() * 2).max(16);
            let old = std::mem::replace(&mut self.entries, vec![0; size]);
            for entry in old.into_iter().filter(|&e| e != 0) {
                let slot = (entry & 0x00FF_FFFF) - 1;
                self.place(hash_of(slot), slot);
            }
        }
        self.place(hash, slot);
        self.len += 1;
    }

    fn place(&mut self, hash: u64, slot: u32) {
        let mask = self.entries.len() - 1;
        let mut pos = self.home(hash);
        while self.entries[pos] != 0 {
            pos = (pos + 1) & mask;
        }
        self.entries[pos] = Self::tag(hash) << 24 | (slot + 1);
    }

    /// Removes `slot`, indexed under `hash`; `hash_of` as for insert.
    fn remove(&mut self, hash: u64, slot: u32, hash_of: impl Fn(u32) -> u64) {
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

/// One shard of thread heads.
#[derive(Default)]
struct ThreadShard {
    heads: HashTable<ThreadHead>,
}

/// A thread's entry: 32 bits of the hash of its id and its newest
/// credential. The id itself is read from that credential's record.
#[derive(Debug, Clone, Copy)]
struct ThreadHead {
    tag: u32,
    newest: SlotKey,
}

/// The part of a thread-id hash a [`ThreadHead`] keeps.
fn thread_tag(hash: u64) -> u32 {
    (hash >> 32) as u32
}

/// A queued sweeper deadline, ordered by time only.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Millis,
    handle: Handle,
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
    /// credential actually died. The credential's id is indexed with its
    /// tombstone; tombstones pushed out by the count limit take their
    /// id-index entries with them.
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
        let credential_id = dead.credential_id;
        match self.by_digest.entry(digest) {
            Entry::Occupied(_) => return,
            Entry::Vacant(vacant) => {
                vacant.insert(dead);
            }
        }
        credentials.insert(credential_id, digest);
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

/// What [`Shared::retire`] did with one record.
enum Retired {
    /// No such record (already removed).
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
                records: (0..SHARDS).map(|_| CachePadded::default()).collect(),
                threads: (0..SHARDS).map(|_| CachePadded::default()).collect(),
                thread_hasher: RandomState::new(),
                instances: DashMap::new(),
                classes: DashMap::new(),
                dead_ids: DashMap::new(),
                generation_lock: RwLock::new(()),
                tombstones: Tombstones {
                    by_digest: DashMap::with_hasher(BuildNoHashHasher::default()),
                    order: Mutex::new(VecDeque::new()),
                },
                sweep_cursor: AtomicUsize::new(0),
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
    /// lock before the new record becomes visible, so the two never work at
    /// the same time and concurrent rotations of one thread serialise.
    pub fn mint(&self, digest: TokenDigest, new: NewCredential<'_>) -> Minted {
        let shared = &*self.shared;
        let limits = &shared.limits;
        let class = shared.class(Class {
            instance: shared.instance(new.provider_instance_id),
            provider_kind: new.provider_kind.map(Box::from),
            scopes: new.scopes,
            labels: new.labels,
            idle_timeout: clamp_override(new.idle_timeout, limits.idle_timeout),
            max_lifetime: clamp_override(new.max_lifetime, limits.max_lifetime),
            absolute_lifetime: limits.absolute_lifetime.unwrap_or(Millis::MAX),
        });
        let (hash, thread_shard) = shared.thread_hash(new.thread_id);
        let mut threads = shared.threads[thread_shard].write();
        let now = shared.clock.now();
        let head = shared.find_thread(&threads, hash, new.thread_id);
        let mut older = head.map_or(SlotKey::NONE, |h| h.newest);
        let mut replaced = 0;
        if new.replace_previous && !older.is_none() {
            let mut kept = Vec::new();
            for handle in shared.chain(older) {
                let same_instance = shared
                    .with_record(handle, |r| {
                        *r.class.instance.id == *new.provider_instance_id
                    })
                    .unwrap_or(false);
                if !same_instance {
                    kept.push(handle);
                    continue;
                }
                let outcome = shared.retire(handle, now, Some(RevocationCause::Replaced));
                if let Retired::RevokedLive = outcome {
                    replaced += 1;
                }
            }
            shared.relink(&kept);
            older = kept.first().map_or(SlotKey::NONE, |h| h.key());
        }
        let instance_generation = {
            let _counting = shared.generation_lock.read();
            class.instance.live.fetch_add(1, Ordering::AcqRel);
            class.instance.generation.load(Ordering::Acquire)
        };
        let record_shard = shard_of_digest(&digest);
        let record = Record {
            digest,
            credential_id: CredentialId::generate_routed(record_shard as u8),
            thread_id: Box::from(new.thread_id),
            class,
            instance_generation,
            created_at: now,
            last_used: AtomicU64::new(now),
            older: AtomicU32::new(older.0),
            version: 0,
        };
        let credential_id = record.credential_id;
        let deadlines = record.deadlines();
        let handle = {
            let mut shard = shared.records[record_shard].write();
            let handle = shard.insert(record_shard, record);
            shard.deadlines.push(Reverse(Deadline {
                at: deadlines.idle_expires_at,
                handle,
            }));
            handle
        };
        shared.set_head(&mut threads, hash, head.map(|h| h.newest), handle.key());
        drop(threads);
        if deadlines.idle_expires_at < shared.sweeper_wakes_at.load(Ordering::Acquire) {
            shared.sweeper_wakeup.notify_one();
        }
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
        let shard = shared.records[shard_of_digest(digest)].read();
        let Some(record) = shard.digest_slot(digest).and_then(|slot| shard.at(slot)) else {
            drop(shard);
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
        let now = shared.clock.now();
        let shard_index = usize::from(credential_id.route()) % SHARDS;
        let shard = shared.records[shard_index].read();
        if let Some(record) = shard
            .credential_slot(credential_id)
            .and_then(|slot| shard.at(slot))
        {
            return Ok(Touched {
                credential_id: record.credential_id,
                deadlines: record.use_at(now, None)?,
            });
        }
        drop(shard);
        Err(shared.rejection_by_id(credential_id))
    }

    /// Renews every live credential of a thread. Fails only when none is
    /// live: with the death of the thread's newest credential, or
    /// [`Rejection::Unknown`] when the thread has none.
    pub fn touch_thread(&self, thread_id: &str) -> Result<Vec<Touched>, Rejection> {
        let shared = &*self.shared;
        let (hash, thread_shard) = shared.thread_hash(thread_id);
        let threads = shared.threads[thread_shard].read();
        let head = shared
            .find_thread(&threads, hash, thread_id)
            .ok_or(Rejection::Unknown)?;
        let now = shared.clock.now();
        let mut chain = shared.chain(head.newest);
        // Mint order, oldest first; so the last failure is the newest's.
        chain.reverse();
        let mut touched = Vec::with_capacity(chain.len());
        let mut failure = Rejection::Unknown;
        for handle in chain {
            let outcome = shared.with_record(handle, |record| {
                record.use_at(now, None).map(|deadlines| Touched {
                    credential_id: record.credential_id,
                    deadlines,
                })
            });
            match outcome {
                Some(Ok(one)) => touched.push(one),
                Some(Err(rejection)) => failure = rejection,
                None => {}
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
        let (hash, thread_shard) = shared.thread_hash(thread_id);
        let mut threads = shared.threads[thread_shard].write();
        let Some(head) = shared.find_thread(&threads, hash, thread_id) else {
            return 0;
        };
        let now = shared.clock.now();
        let chain = shared.chain(head.newest);
        let mut revoked = 0;
        for handle in chain {
            if let Retired::RevokedLive = shared.retire(handle, now, Some(RevocationCause::Thread))
            {
                revoked += 1;
            }
        }
        shared.set_head(&mut threads, hash, Some(head.newest), SlotKey::NONE);
        revoked
    }

    /// Revokes one credential by its handle; returns 1 if it was live.
    pub fn revoke_credential(&self, credential_id: &CredentialId) -> u64 {
        let shared = &*self.shared;
        let shard_index = usize::from(credential_id.route()) % SHARDS;
        let found = {
            let shard = shared.records[shard_index].read();
            shard.credential_slot(credential_id).and_then(|slot| {
                let record = shard.at(slot)?;
                Some((shard.handle(shard_index, slot), record.thread_id.clone()))
            })
        };
        let Some((handle, thread_id)) = found else {
            return 0;
        };
        let outcome =
            shared.remove_from_thread(handle, &thread_id, Some(RevocationCause::Credential));
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
        self.shared.records.iter().map(|s| s.read().len()).sum()
    }

    /// How many tombstones are held.
    pub fn tombstone_count(&self) -> usize {
        self.shared.tombstones.by_digest.len()
    }

    /// How many credential ids are indexed (live records and tombstones).
    pub fn indexed_credential_ids(&self) -> usize {
        let live: usize = self
            .shared
            .records
            .iter()
            .map(|s| s.read().by_credential.len)
            .sum();
        live + self.shared.dead_ids.len()
    }

    /// How many sweeper deadlines are queued (some may be stale).
    pub fn queued_deadlines(&self) -> usize {
        self.shared
            .records
            .iter()
            .map(|s| s.read().deadlines.len())
            .sum()
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

    /// The keyed hash of a thread id and its thread shard. The shard comes
    /// from bits the shard's own table does not use (it takes the low bits
    /// for the bucket and the top seven for the tag).
    fn thread_hash(&self, thread_id: &str) -> (u64, usize) {
        let hash = self.thread_hasher.hash_one(thread_id);
        (hash, (hash >> 40) as usize % SHARDS)
    }

    /// The head of a thread's list, if the thread has credentials.
    fn find_thread(&self, threads: &ThreadShard, hash: u64, thread_id: &str) -> Option<ThreadHead> {
        threads
            .heads
            .find(hash, |head| {
                head.tag == thread_tag(hash)
                    && self
                        .with_key(head.newest, |r| *r.thread_id == *thread_id)
                        .unwrap_or(false)
            })
            .copied()
    }

    /// Runs `read` on the record `handle` names, under its shard's read lock.
    fn with_record<T>(&self, handle: Handle, read: impl FnOnce(&Record) -> T) -> Option<T> {
        let shard = self.records[handle.shard()].read();
        shard.get(handle).map(read)
    }

    /// Runs `read` on the record in the slot `key` names, under its shard's
    /// read lock.
    fn with_key<T>(&self, key: SlotKey, read: impl FnOnce(&Record) -> T) -> Option<T> {
        let shard = self.records[key.shard()].read();
        shard.at(key.slot()).map(read)
    }

    /// The hash of the thread a head belongs to, for its table to grow.
    fn rehash_thread(&self, head: &ThreadHead) -> u64 {
        self.with_key(head.newest, |r| self.thread_hash(&r.thread_id).0)
            .unwrap_or(0)
    }

    /// A thread's credentials from `newest` on, newest first. The caller
    /// holds the thread's shard lock, so the list does not change meanwhile.
    fn chain(&self, newest: SlotKey) -> Vec<Handle> {
        let mut chain = Vec::new();
        let mut next = newest;
        while !next.is_none() {
            let shard = self.records[next.shard()].read();
            let Some(record) = shard.at(next.slot()) else {
                break;
            };
            chain.push(shard.handle(next.shard(), next.slot()));
            next = SlotKey(record.older.load(Ordering::Acquire));
        }
        chain
    }

    /// Links `kept` (newest first) into one list. The caller holds the
    /// thread's shard lock.
    fn relink(&self, kept: &[Handle]) {
        for (i, &handle) in kept.iter().enumerate() {
            let older = kept.get(i + 1).map_or(SlotKey::NONE, |h| h.key());
            self.with_record(handle, |r| r.older.store(older.0, Ordering::Release));
        }
    }

    /// Takes the record `handle` names out of its thread's list and its
    /// shard if it is dead, or if `revoke` is given; `thread_id` is the
    /// record's thread as read before the thread lock was taken.
    fn remove_from_thread(
        &self,
        handle: Handle,
        thread_id: &str,
        revoke: Option<RevocationCause>,
    ) -> Retired {
        let (hash, thread_shard) = self.thread_hash(thread_id);
        let mut threads = self.threads[thread_shard].write();
        let Some(head) = self.find_thread(&threads, hash, thread_id) else {
            return Retired::Absent;
        };
        let chain = self.chain(head.newest);
        let Some(position) = chain.iter().position(|&h| h == handle) else {
            return Retired::Absent;
        };
        let outcome = self.retire(handle, self.clock.now(), revoke);
        if let Retired::RevokedLive | Retired::RemovedDead = outcome {
            // Only the link that pointed at the removed record changes.
            let older = chain.get(position + 1).map_or(SlotKey::NONE, |h| h.key());
            match position.checked_sub(1) {
                None => self.set_head(&mut threads, hash, Some(head.newest), older),
                Some(newer) => {
                    self.with_record(chain[newer], |r| r.older.store(older.0, Ordering::Release));
                }
            }
        }
        outcome
    }

    /// Makes `newest` the head of the thread whose head was `previous`
    /// (`None`: the thread had no entry); [`SlotKey::NONE`] drops the entry.
    fn set_head(
        &self,
        threads: &mut ThreadShard,
        hash: u64,
        previous: Option<SlotKey>,
        newest: SlotKey,
    ) {
        let entry = previous.and_then(|previous| {
            threads
                .heads
                .find_entry(hash, |h| h.newest == previous)
                .ok()
        });
        match (entry, newest.is_none()) {
            (Some(entry), true) => {
                entry.remove();
            }
            (Some(mut entry), false) => entry.get_mut().newest = newest,
            (None, true) => {}
            (None, false) => {
                threads.heads.insert_unique(
                    hash,
                    ThreadHead {
                        tag: thread_tag(hash),
                        newest,
                    },
                    |head| self.rehash_thread(head),
                );
            }
        }
    }

    /// Why an absent digest fails: its tombstone's reason, or unknown.
    fn rejection(&self, digest: &TokenDigest) -> Rejection {
        match self.tombstones.get(digest) {
            Some(dead) => Rejection::Dead(dead),
            None => Rejection::Unknown,
        }
    }

    /// Why an absent credential id fails: its tombstone's reason, or unknown.
    fn rejection_by_id(&self, credential_id: &CredentialId) -> Rejection {
        match self.dead_ids.get(credential_id).map(|digest| *digest) {
            Some(digest) => self.rejection(&digest),
            None => Rejection::Unknown,
        }
    }

    /// Removes the record `handle` names if it is dead, or if `revoke` is
    /// given, leaving a tombstone, and releases what it held. The caller
    /// holds the record's thread shard lock and takes the record out of the
    /// thread's list.
    ///
    /// The tombstone is written under the record's shard lock, before the
    /// record disappears, so a Resolve that misses the record always finds
    /// the tombstone. Removal and the live count change together with
    /// respect to RevokeAll, so a credential is counted by exactly one
    /// revocation.
    fn retire(&self, handle: Handle, now: Millis, revoke: Option<RevocationCause>) -> Retired {
        let counting = self.generation_lock.read();
        let mut shard = self.records[handle.shard()].write();
        let Some(record) = shard.get(handle) else {
            return Retired::Absent;
        };
        let (reason, was_live) = match (record.death(now), revoke) {
            (Some(reason), _) => (reason, false),
            (None, Some(cause)) => (DeathReason::Revoked(cause), true),
            (None, None) => return Retired::StillLive(record.deadlines().idle_expires_at),
        };
        self.tombstones.record(
            record.digest,
            record.dead(reason),
            now,
            &self.limits,
            &self.dead_ids,
        );
        if record.counted() {
            record.class.instance.live.fetch_sub(1, Ordering::AcqRel);
        }
        let removed = shard.remove(handle);
        drop((shard, counting));
        if let Some(removed) = removed {
            self.release(removed);
        }
        if was_live {
            Retired::RevokedLive
        } else {
            Retired::RemovedDead
        }
    }

    /// Lets go of a removed record's class and provider instance when no
    /// other record uses them.
    fn release(&self, record: Record) {
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

    /// Handles one batch of due deadlines, taken from the shards in turn.
    /// Returns what it did and whether more are due.
    fn sweep_batch(&self) -> (SweepReport, bool) {
        let now = self.clock.now();
        let mut report = SweepReport::default();
        let mut due: Vec<Handle> = Vec::new();
        let start = self.sweep_cursor.fetch_add(1, Ordering::Relaxed);
        let mut more = false;
        for i in 0..SHARDS {
            let mut shard = self.records[(start + i) % SHARDS].write();
            while let Some(Reverse(next)) = shard.deadlines.peek() {
                if next.at > now {
                    break;
                }
                if due.len() == SWEEP_BATCH {
                    more = true;
                    break;
                }
                due.push(next.handle);
                shard.deadlines.pop();
            }
            if more {
                break;
            }
        }
        for handle in due {
            // A first look under the read lock; only the dead need their
            // thread's lock.
            let probe = self.with_record(handle, |record| match record.death(now) {
                None => Err(record.deadlines().idle_expires_at),
                Some(_) => Ok(record.thread_id.clone()),
            });
            let outcome = match probe {
                None => Retired::Absent,
                Some(Err(next)) => Retired::StillLive(next),
                Some(Ok(thread_id)) => self.remove_from_thread(handle, &thread_id, None),
            };
            match outcome {
                Retired::StillLive(at) => {
                    report.requeued += 1;
                    self.records[handle.shard()]
                        .write()
                        .deadlines
                        .push(Reverse(Deadline { at, handle }));
                }
                Retired::RemovedDead | Retired::RevokedLive => report.removed += 1,
                Retired::Absent => {}
            }
        }
        self.tombstones.evict_older_than(
            now.saturating_sub(self.limits.tombstone_retention),
            &self.dead_ids,
        );
        (report, more)
    }

    /// When the sweeper next has work: the earliest queued deadline or
    /// tombstone expiry.
    fn next_due(&self) -> Option<Millis> {
        let deadline = self
            .records
            .iter()
            .filter_map(|shard| shard.read().deadlines.peek().map(|Reverse(d)| d.at))
            .min();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The digest index agrees with a plain map over random inserts and
    /// removals, through growth and wrap-around, with colliding homes and
    /// tags (hashes drawn from a small range).
    #[test]
    fn slot_index_agrees_with_a_map() {
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
