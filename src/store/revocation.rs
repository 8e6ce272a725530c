//! RevokeAll in constant time, for every reach: everything, everything one
//! caller minted, or one caller's credentials of one provider instance.
//!
//! Each of those is a [`Scope`]. Revoking a scope stamps it with a fresh
//! revocation epoch; a record remembers the epoch current when it was
//! minted, and is dead once any of its three scopes (its pair, its owner,
//! the global one) carries a later stamp. Resolve reads three atomics that
//! only RevokeAll writes; no revocation visits a record, and the sweeper
//! removes revoked records lazily when their queued deadline falls due.
//!
//! RevokeAll also reports how many live credentials it ended. Each scope
//! counts its live records; a count made stale by the revocation of an
//! enclosing scope (the owner's or the global one) is reset the next time
//! it is touched rather than by visiting every pair, so even the counts
//! cost nothing per credential. Counting and stamping happen under one
//! read-write lock: Mint and removal read it, RevokeAll writes it, Resolve
//! never takes it. So a credential is counted by exactly one revocation.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;
use dashmap::DashMap;
use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard};

use super::types::{Reach, RevocationCause, RevokeAllTarget};
use crate::clock::Millis;

/// How many revocations a scope remembers, to name the first revocation
/// that hit a record. Records revoked by RevokeAll stay in memory only until
/// their queued deadline (at most an idle timeout), so only a scope revoked
/// more often than this within one idle timeout while holding live
/// credentials each time could make a record report a later revocation than
/// the one that ended it. Bounded so that a caller looping Mint and
/// RevokeAll cannot grow it.
const HISTORY: usize = 256;

/// Something RevokeAll ends in one step.
#[derive(Default)]
pub(super) struct Scope {
    /// The epoch of its latest revocation (0: never). Read by every
    /// Resolve, written only under the revocation lock; on a cache line of
    /// its own, away from the counts every Mint writes.
    revoked_at: CachePadded<AtomicU64>,
    /// Its latest revocations, oldest first: (epoch, when). Read only on
    /// failures.
    history: Mutex<VecDeque<(u64, Millis)>>,
}

impl Scope {
    fn revoked_after(&self, epoch: u64) -> bool {
        self.revoked_at.load(Ordering::Acquire) > epoch
    }

    fn stamp(&self, epoch: u64, now: Millis) {
        let mut history = self.history.lock();
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back((epoch, now));
        drop(history);
        self.revoked_at.store(epoch, Ordering::Release);
    }

    /// Its first revocation after `epoch`, if any (the oldest remembered
    /// one when the first has been forgotten): (epoch, when).
    fn first_after(&self, epoch: u64) -> Option<(u64, Millis)> {
        if !self.revoked_after(epoch) {
            return None;
        }
        let history = self.history.lock();
        let first = history.partition_point(|&(stamp, _)| stamp <= epoch);
        history.get(first).copied()
    }
}

/// How many live records a scope holds, valid while no enclosing scope was
/// revoked after `valid_since`.
#[derive(Default)]
struct LiveCount {
    valid_since: u64,
    live: u64,
}

impl LiveCount {
    /// The count, or 0 when an enclosing revocation at `enclosing` ended
    /// every record it counted.
    fn current(&self, enclosing: u64) -> u64 {
        if self.valid_since < enclosing {
            0
        } else {
            self.live
        }
    }

    /// Counts one more record minted at `epoch`.
    fn add(&mut self, epoch: u64, enclosing: u64) {
        if self.valid_since < enclosing {
            *self = LiveCount {
                valid_since: epoch,
                live: 0,
            };
        }
        self.live += 1;
    }

    /// Takes `n` records out of the count.
    fn remove(&mut self, n: u64) {
        self.live = self.live.saturating_sub(n);
    }

    /// Empties the count for a revocation at `epoch` (when it holds
    /// anything); returns what it held, given the enclosing revocation at
    /// `enclosing`.
    fn take(&mut self, enclosing: u64, epoch: u64) -> u64 {
        let live = self.current(enclosing);
        if live > 0 {
            *self = LiveCount {
                valid_since: epoch,
                live: 0,
            };
        }
        live
    }
}

/// A caller that minted credentials: its RevokeAll scope. Owners are few
/// (the callers of the callers file) and kept for the life of the store.
pub(super) struct Owner {
    /// The caller's name.
    pub(super) name: Arc<str>,
    scope: Scope,
    live: CachePadded<Mutex<LiveCount>>,
    /// Held by a Mint with a quota from its checks until its record is
    /// counted, so that two Mints of one caller never both take its last
    /// place (see [`Revocations::owner_live`]).
    minting: Mutex<()>,
}

impl Owner {
    /// Serialises this caller's quota-checked Mints; taken after the
    /// thread's shard lock, before any count's.
    pub(super) fn minting(&self) -> MutexGuard<'_, ()> {
        self.minting.lock()
    }
}

/// One caller's credentials of one provider instance: what a non-admin's
/// RevokeAll for an instance ends. Interned while records use it.
pub(super) struct Pair {
    /// The caller that minted them.
    pub(super) owner: Arc<Owner>,
    /// The provider instance.
    pub(super) instance_id: Arc<str>,
    /// Whether its owner holds the instance against other callers: true
    /// when a caller that reaches only its own credentials made it (an
    /// adapter), false for an administrator's.
    claims: bool,
    scope: Scope,
    live: CachePadded<Mutex<LiveCount>>,
}

impl Pair {
    /// Its name in the journal.
    pub(super) fn name(&self) -> ScopeName {
        ScopeName::Pair {
            owner: self.owner.name.clone(),
            instance: self.instance_id.clone(),
        }
    }

    /// Whether its owner holds the instance against other callers.
    pub(super) fn claims(&self) -> bool {
        self.claims
    }
}

/// A RevokeAll scope as the journal names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ScopeName {
    /// Everything.
    Global,
    /// Everything one caller minted.
    Owner(Arc<str>),
    /// One caller's credentials of one provider instance.
    Pair {
        /// The caller.
        owner: Arc<str>,
        /// The provider instance.
        instance: Arc<str>,
    },
}

/// A scope's latest stamp: the journal's record of a RevokeAll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ScopeStamp {
    pub(super) name: ScopeName,
    pub(super) epoch: u64,
    pub(super) at: Millis,
}

/// A scope's remembered stamps, for a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ScopeState {
    pub(super) name: ScopeName,
    /// For a pair: whether it claims its instance.
    pub(super) claims: bool,
    /// (epoch, when), oldest first.
    pub(super) history: Vec<(u64, Millis)>,
}

/// Every revocation scope and the epoch that orders them.
#[derive(Default)]
pub(super) struct Revocations {
    /// The latest epoch handed out; records are minted at it. Advanced only
    /// under `lock` written.
    epoch: CachePadded<AtomicU64>,
    global: Scope,
    global_live: CachePadded<AtomicU64>,
    owners: DashMap<Arc<str>, Arc<Owner>>,
    /// The pairs of each provider instance, by instance id: the callers
    /// that hold credentials of it (usually one: a provider instance is one
    /// adapter's).
    instances: DashMap<Arc<str>, Vec<Arc<Pair>>>,
    /// Makes "stamp and count" (Mint, removal) atomic with respect to
    /// "revoke and take the count" (RevokeAll).
    lock: CachePadded<RwLock<()>>,
}

/// Held while a record is stamped and counted, or uncounted: RevokeAll
/// waits for it.
pub(super) struct Counting<'a> {
    _guard: RwLockReadGuard<'a, ()>,
}

/// A provider instance holds credentials of a caller out of the minting
/// caller's reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct InstanceTaken;

impl Revocations {
    /// The owner named `name`, created on first use.
    fn owner(&self, name: &str) -> Arc<Owner> {
        if let Some(found) = self.owners.get(name) {
            return found.clone();
        }
        let name: Arc<str> = Arc::from(name);
        self.owners
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(Owner {
                    name,
                    scope: Scope::default(),
                    live: CachePadded::default(),
                    minting: Mutex::new(()),
                })
            })
            .clone()
    }

    /// The pair of `owner` and `instance_id`, created on first use. A
    /// provider instance belongs to the adapter that holds credentials of
    /// it: when another caller out of `reach` holds some (and is not an
    /// administrator, whose pairs claim nothing), the instance is taken, so
    /// an adapter may neither mint as another adapter's instance nor stand
    /// in the way of its rotations. The check and the creation happen under
    /// the instance's entry lock, so two callers cannot both claim a new
    /// instance.
    pub(super) fn pair(
        &self,
        owner: &str,
        instance_id: &str,
        reach: Reach<'_>,
    ) -> Result<Arc<Pair>, InstanceTaken> {
        let owner = self.owner(owner);
        let mut pairs = match self.instances.get_mut(instance_id) {
            Some(pairs) => pairs,
            None => self.instances.entry(Arc::from(instance_id)).or_default(),
        };
        let taken = pairs.iter().any(|pair| {
            pair.claims && !Arc::ptr_eq(&pair.owner, &owner) && !reach.covers(&pair.owner.name)
        });
        if taken {
            return Err(InstanceTaken);
        }
        if let Some(pair) = pairs.iter().find(|pair| Arc::ptr_eq(&pair.owner, &owner)) {
            return Ok(pair.clone());
        }
        let pair = Arc::new(Pair {
            owner,
            instance_id: pairs.key().clone(),
            claims: reach != Reach::All,
            scope: Scope::default(),
            live: CachePadded::default(),
        });
        pairs.push(pair.clone());
        Ok(pair)
    }

    /// Forgets `pair` when no record uses it any more (the caller holds one
    /// reference and the instance's list the other), so its counts and
    /// history go with it, and the instance with its last pair.
    pub(super) fn release(&self, pair: Arc<Pair>) {
        let id = pair.instance_id.clone();
        let released = Arc::as_ptr(&pair);
        drop(pair);
        if let Some(mut pairs) = self.instances.get_mut(&id) {
            pairs.retain(|pair| !(Arc::as_ptr(pair) == released && Arc::strong_count(pair) == 1));
        }
        self.instances.remove_if(&id, |_, pairs| pairs.is_empty());
    }

    /// Starts stamping or uncounting records.
    pub(super) fn counting(&self) -> Counting<'_> {
        Counting {
            _guard: self.lock.read(),
        }
    }

    /// Counts a record of `pair` being minted now; returns the epoch it is
    /// minted at.
    pub(super) fn stamp(&self, _counting: &Counting<'_>, pair: &Pair) -> u64 {
        let epoch = self.epoch.load(Ordering::Acquire);
        let global = self.global.revoked_at.load(Ordering::Acquire);
        let owner = pair.owner.scope.revoked_at.load(Ordering::Acquire);
        pair.live.lock().add(epoch, owner.max(global));
        pair.owner.live.lock().add(epoch, global);
        self.global_live.fetch_add(1, Ordering::AcqRel);
        epoch
    }

    /// How many live credentials `owner` holds: the records it minted that
    /// no RevokeAll ended and that are not yet removed (a credential past
    /// its deadline counts until the sweeper, due then, removes it). What a
    /// caller's quota compares: it costs one lock, and a RevokeAll frees
    /// the caller's quota at once, while the store's budgets wait for the
    /// records to be reclaimed.
    pub(super) fn owner_live(&self, owner: &Owner) -> u64 {
        let global = self.global.revoked_at.load(Ordering::Acquire);
        owner.live.lock().current(global)
    }

    /// Takes a removed record that still counted out of the counts.
    pub(super) fn uncount(&self, _counting: &Counting<'_>, pair: &Pair) {
        pair.live.lock().remove(1);
        pair.owner.live.lock().remove(1);
        self.global_live.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether a record of `pair` minted at `epoch` was revoked since. The
    /// Resolve path: three loads of lines only RevokeAll writes.
    pub(super) fn is_revoked(&self, pair: &Pair, epoch: u64) -> bool {
        pair.scope.revoked_after(epoch)
            || pair.owner.scope.revoked_after(epoch)
            || self.global.revoked_after(epoch)
    }

    /// The revocation that ended a record of `pair` minted at `epoch`: the
    /// first of its scopes to be revoked after it, and when.
    pub(super) fn first_revocation(&self, pair: &Pair, epoch: u64) -> (Millis, RevocationCause) {
        [
            (
                pair.scope.first_after(epoch),
                RevocationCause::ProviderInstance,
            ),
            (pair.owner.scope.first_after(epoch), RevocationCause::Caller),
            (self.global.first_after(epoch), RevocationCause::All),
        ]
        .into_iter()
        .filter_map(|(stamp, cause)| stamp.map(|stamp| (stamp, cause)))
        .min_by_key(|&((stamp, _), _)| stamp)
        .map_or((0, RevocationCause::All), |((_, at), cause)| (at, cause))
    }

    /// Revokes `target` at `now`; returns how many live credentials it
    /// ended. The cost grows with the number of callers of one instance at
    /// most, never with the number of credentials.
    ///
    /// `journal` is called under the lock that orders RevokeAll with Mint's
    /// stamp, with the latest stamp of every scope `target` names (new or
    /// earlier): what the journal must hold for the revocation to survive a
    /// restart, even when this call ended nothing because a failed attempt
    /// before it already had.
    pub(super) fn revoke(
        &self,
        target: RevokeAllTarget<'_>,
        now: Millis,
        journal: impl FnOnce(&[ScopeStamp]),
    ) -> u64 {
        let _bumping = self.lock.write();
        let epoch = self.epoch.load(Ordering::Acquire) + 1;
        let global = self.global.revoked_at.load(Ordering::Acquire);
        let revoked = match target {
            RevokeAllTarget::Everything => {
                let live = self.global_live.swap(0, Ordering::AcqRel);
                if live > 0 {
                    self.global.stamp(epoch, now);
                }
                live
            }
            RevokeAllTarget::MintedBy(name) => self.owners.get(name).map_or(0, |owner| {
                let live = owner.live.lock().take(global, epoch);
                if live > 0 {
                    owner.scope.stamp(epoch, now);
                    self.global_live.fetch_sub(live, Ordering::AcqRel);
                }
                live
            }),
            RevokeAllTarget::MintedByForInstance {
                minted_by,
                provider_instance_id,
            } => self
                .pairs_of(provider_instance_id)
                .iter()
                .map(|pair| {
                    if *pair.owner.name == *minted_by {
                        self.revoke_pair(pair, epoch, global, now)
                    } else {
                        0
                    }
                })
                .sum(),
            // One step per caller holding the instance, not per credential.
            RevokeAllTarget::Instance(id) => self
                .pairs_of(id)
                .iter()
                .map(|pair| self.revoke_pair(pair, epoch, global, now))
                .sum(),
        };
        if revoked > 0 {
            self.epoch.store(epoch, Ordering::Release);
        }
        journal(&self.stamps_of(target));
        revoked
    }

    /// The latest stamps of the scopes `target` names.
    fn stamps_of(&self, target: RevokeAllTarget<'_>) -> Vec<ScopeStamp> {
        let mut stamps = Vec::new();
        let mut push = |name: ScopeName, scope: &Scope| {
            if let Some(&(epoch, at)) = scope.history.lock().back() {
                stamps.push(ScopeStamp { name, epoch, at });
            }
        };
        match target {
            RevokeAllTarget::Everything => push(ScopeName::Global, &self.global),
            RevokeAllTarget::MintedBy(name) => {
                if let Some(owner) = self.owners.get(name) {
                    push(ScopeName::Owner(owner.name.clone()), &owner.scope);
                }
            }
            RevokeAllTarget::MintedByForInstance {
                provider_instance_id,
                ..
            }
            | RevokeAllTarget::Instance(provider_instance_id) => {
                let only = match target {
                    RevokeAllTarget::MintedByForInstance { minted_by, .. } => Some(minted_by),
                    _ => None,
                };
                for pair in self.pairs_of(provider_instance_id) {
                    if only.is_none_or(|name| *pair.owner.name == *name) {
                        push(pair.name(), &pair.scope);
                    }
                }
            }
        }
        stamps
    }

    /// The revocation epoch: records minted now are minted at it.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Every scope's state, for a snapshot: the global one, each owner's
    /// and each pair's (a pair exists while records use it).
    pub(super) fn scope_states(&self) -> Vec<ScopeState> {
        let _quiet = self.lock.write();
        let mut states = Vec::new();
        let mut push = |name: ScopeName, claims: bool, scope: &Scope| {
            let history: Vec<(u64, Millis)> = scope.history.lock().iter().copied().collect();
            if !history.is_empty() {
                states.push(ScopeState {
                    name,
                    claims,
                    history,
                });
            }
        };
        push(ScopeName::Global, false, &self.global);
        for owner in self.owners.iter() {
            push(ScopeName::Owner(owner.name.clone()), false, &owner.scope);
        }
        for pairs in self.instances.iter() {
            for pair in pairs.iter() {
                push(pair.name(), pair.claims, &pair.scope);
            }
        }
        states
    }

    /// Puts back a scope's stamps read from the journal or a snapshot,
    /// oldest first. Stamps it already holds are skipped, so replaying a
    /// record twice is harmless; the epoch moves up to the newest.
    ///
    /// A pair's scope is created with `claims` when given (a snapshot's);
    /// without it (a RevokeAll record), a pair that holds no record is
    /// left alone, as it has nothing to revoke.
    pub(super) fn restore_stamps(
        &self,
        name: &ScopeName,
        claims: Option<bool>,
        stamps: &[(u64, Millis)],
    ) {
        let pair;
        let owner;
        let scope = match name {
            ScopeName::Global => &self.global,
            ScopeName::Owner(name) => {
                owner = self.owner(name);
                &owner.scope
            }
            ScopeName::Pair {
                owner: owner_name,
                instance,
            } => {
                let found = match claims {
                    Some(claims) => Some(self.restored_pair(owner_name, instance, claims)),
                    None => self.instances.get(&**instance).and_then(|pairs| {
                        pairs
                            .iter()
                            .find(|pair| *pair.owner.name == **owner_name)
                            .cloned()
                    }),
                };
                let Some(found) = found else {
                    return;
                };
                pair = found;
                &pair.scope
            }
        };
        let _bumping = self.lock.write();
        for &(epoch, at) in stamps {
            if scope.revoked_at.load(Ordering::Acquire) < epoch {
                scope.stamp(epoch, at);
            }
            self.epoch.fetch_max(epoch, Ordering::AcqRel);
        }
    }

    /// Moves the epoch up to `epoch` (a snapshot's).
    pub(super) fn restore_epoch(&self, epoch: u64) {
        let _bumping = self.lock.write();
        self.epoch.fetch_max(epoch, Ordering::AcqRel);
    }

    /// The pair of a record read back from the journal: no claim is
    /// checked, since the Mint that made it passed them; `claims` is what
    /// that Mint's caller made it.
    pub(super) fn restored_pair(&self, owner: &str, instance_id: &str, claims: bool) -> Arc<Pair> {
        let owner = self.owner(owner);
        let mut pairs = match self.instances.get_mut(instance_id) {
            Some(pairs) => pairs,
            None => self.instances.entry(Arc::from(instance_id)).or_default(),
        };
        if let Some(pair) = pairs.iter().find(|pair| Arc::ptr_eq(&pair.owner, &owner)) {
            return pair.clone();
        }
        let pair = Arc::new(Pair {
            owner,
            instance_id: pairs.key().clone(),
            claims,
            scope: Scope::default(),
            live: CachePadded::default(),
        });
        pairs.push(pair.clone());
        pair
    }

    /// Recounts the live records from scratch after a restore, which puts
    /// records and stamps back in any order: `counted` yields the pair and
    /// mint epoch of every record that no RevokeAll ended.
    pub(super) fn recount<'a>(&self, counted: impl Iterator<Item = (&'a Pair, u64)>) {
        let _bumping = self.lock.write();
        self.global_live.store(0, Ordering::Release);
        for owner in self.owners.iter() {
            *owner.live.lock() = LiveCount::default();
        }
        for pairs in self.instances.iter() {
            for pair in pairs.iter() {
                *pair.live.lock() = LiveCount::default();
            }
        }
        let global = self.global.revoked_at.load(Ordering::Acquire);
        for (pair, epoch) in counted {
            let owner = pair.owner.scope.revoked_at.load(Ordering::Acquire);
            pair.live.lock().add(epoch, owner.max(global));
            pair.owner.live.lock().add(epoch, global);
            self.global_live.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The pairs of a provider instance, copied out of the map so no map
    /// lock is held while they are revoked.
    fn pairs_of(&self, instance_id: &str) -> Vec<Arc<Pair>> {
        self.instances
            .get(instance_id)
            .map_or_else(Vec::new, |pairs| pairs.clone())
    }

    /// Revokes one pair at `epoch`; called with the lock written.
    fn revoke_pair(&self, pair: &Pair, epoch: u64, global: u64, now: Millis) -> u64 {
        let owner = &pair.owner;
        let enclosing = owner.scope.revoked_at.load(Ordering::Acquire).max(global);
        let live = pair.live.lock().take(enclosing, epoch);
        if live > 0 {
            pair.scope.stamp(epoch, now);
            owner.live.lock().remove(live);
            self.global_live.fetch_sub(live, Ordering::AcqRel);
        }
        live
    }
}
